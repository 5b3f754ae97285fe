//! `homecmp check --config FILE`: every problem of a configuration at once,
//! each with its line and column, and the files it names opened and
//! checked, as `nginx -t` does. The server would start on a config this
//! finds nothing wrong with.
//!
//! Three passes: the TOML syntax (a syntax error stops there: nothing after
//! it can be read); the keys and their types, each offending key left out
//! in turn (blanked, so lines and columns stay as in the file) to find the
//! next; then the checks `Config::parse` makes (ranges, addresses,
//! combinations), each placed at its key. Then the files: certificate and
//! key, federation certificate, key and CA, RADIUS secrets, NATS
//! credentials, the data dir.

use std::path::Path;

use crate::config::Config;

/// One problem: where it is in the file (line and column from 1; `None`
/// for what is not in the file: an environment override, a file it
/// names) and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl Problem {
    /// `file:line:column: message`, or `file: message`.
    pub fn show(&self, file: &str) -> String {
        match self.at {
            Some((line, column)) => format!("{file}:{line}:{column}: {}", self.message),
            None => format!("{file}: {}", self.message),
        }
    }
}

/// Most problems one run reports (each one costs a parse of the file).
const MAX_PROBLEMS: usize = 200;

/// Every problem of the config at `path` with `env`'s overrides; none
/// when the server would start on it.
pub fn check(path: &Path, env: Vec<(String, String)>) -> Vec<Problem> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return vec![Problem {
                at: None,
                message: format!("cannot read it: {e}"),
            }];
        }
    };
    check_text(&text, env)
}

/// [`check`] of a config's text.
pub fn check_text(text: &str, env: Vec<(String, String)>) -> Vec<Problem> {
    if let Err(e) = toml::from_str::<toml::Table>(text) {
        let start = e.span().map_or(0, |span| span.start);
        return vec![Problem {
            at: Some(line_column(text, start)),
            message: format!("TOML syntax: {}", e.message().trim()),
        }];
    }
    let (mut problems, readable) = keys_and_types(text);
    match Config::parse(&readable, env) {
        Ok(config) if problems.is_empty() => problems.extend(files(&config)),
        Ok(_) => {}
        Err(errors) => problems.extend(errors.0.into_iter().map(|message| Problem {
            at: key_of(&message).and_then(|key| locate(text, key)),
            message,
        })),
    }
    // In the file's order; what is not in the file last.
    problems.sort_by_key(|problem| problem.at.unwrap_or((usize::MAX, 0)));
    problems
}

/// The unknown keys and the values of the wrong type, each at its place;
/// and the text with every one of them blanked out.
fn keys_and_types(text: &str) -> (Vec<Problem>, String) {
    let mut problems = Vec::new();
    let mut readable = text.to_owned();
    while problems.len() < MAX_PROBLEMS {
        let Err(e) = crate::config::read_keys(&readable) else {
            break;
        };
        let start = e.span().map_or(0, |span| span.start);
        problems.push(Problem {
            at: Some(line_column(text, start)),
            message: e.message().trim().to_owned(),
        });
        match blank_at(&readable, start) {
            Some(blanked) => readable = blanked,
            None => break,
        }
    }
    (problems, readable)
}

/// `text` with the entry at byte `offset` replaced by spaces (newlines
/// kept): a `[table]` header with its keys, or a `key = value` with every
/// line of its value. `None` if nothing was left to blank.
fn blank_at(text: &str, offset: usize) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut first = 0;
    let mut start = 0;
    for (i, line) in lines.iter().enumerate() {
        if start + line.len() > offset {
            first = i;
            break;
        }
        start += line.len();
        first = i + 1;
    }
    if first >= lines.len() || lines[first].trim().is_empty() {
        return None;
    }
    let blank = |line: &str| -> String {
        line.chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect()
    };
    let mut out: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
    if lines[first].trim_start().starts_with('[') {
        // A table: its header and its keys, up to the next header.
        out[first] = blank(lines[first]);
        for i in first + 1..lines.len() {
            if lines[i].trim_start().starts_with('[') {
                break;
            }
            out[i] = blank(lines[i]);
        }
        return Some(out.concat());
    }
    // A key: its line, and the lines its value goes on to.
    for i in first..lines.len() {
        out[i] = blank(lines[i]);
        if toml::from_str::<toml::Table>(&out.concat()).is_ok() {
            return Some(out.concat());
        }
    }
    None
}

/// Line and column (from 1, the column in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The `section.key` a validation message starts with.
fn key_of(message: &str) -> Option<&str> {
    let key = message.split([':', ' ', '[']).next()?;
    key.contains('.').then_some(key)
}

/// Where `section.key` is set in `text`: the key's line under its
/// `[section]` header (or the header itself, for a key the file does not
/// set). `None` when the section is not in the file.
fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let (section, key) = path.split_once('.')?;
    let key = key.split('.').next().unwrap_or(key);
    let mut header = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('[') {
            let name = trimmed.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("").trim();
            if header.is_some() && name != section {
                break;
            }
            if name == section {
                header = Some(offset + indent);
            }
        } else if header.is_some() {
            let name = trimmed.split('=').next().unwrap_or("").trim();
            if name == key && trimmed.contains('=') {
                return Some(line_column(text, offset + indent));
            }
        }
        offset += line.len();
    }
    header.map(|at| line_column(text, at))
}

/// The files a valid config names, opened and read as the server will:
/// problems without a place in the config file.
fn files(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |message: String| problems.push(Problem { at: None, message });
    if let Some((cert, key)) = &config.tls {
        match crate::tls::load(cert, key) {
            Ok((certs, key)) => {
                if let Some(message) = expired(&certs[0], "server.tls_cert") {
                    problem(message);
                }
                if let Err(e) = crate::tls::server_config(certs, key, &[b"h2"]) {
                    problem(format!("server.tls_cert and server.tls_key: {e}"));
                }
            }
            Err(e) => problem(format!("server.tls_cert or server.tls_key: {e}")),
        }
    }
    if let Some(federation) = &config.federation {
        let membership = crate::tls::Membership::load(
            &federation.cert_file,
            &federation.key_file,
            &federation.ca_file,
        );
        match membership.and_then(|m| m.server_config().map(|_| m)) {
            Ok(membership) => {
                if let Some(message) = membership
                    .certs
                    .first()
                    .and_then(|leaf| expired(leaf, "federation.cert_file"))
                {
                    problem(message);
                }
            }
            Err(e) => problem(format!("federation: {e}")),
        }
    }
    if let Some(radius) = &config.radius
        && let Err(e) = crate::radius::clients(radius)
    {
        problem(format!("radius: {e}"));
    }
    if let Some(cluster) = &config.cluster {
        let named = [
            ("cluster.credentials_file", &cluster.credentials_file),
            ("cluster.nkey_seed_file", &cluster.nkey_seed_file),
            ("cluster.tls_ca_file", &cluster.tls_ca_file),
        ];
        for (key, file) in named {
            if let Some(file) = file
                && let Err(e) = std::fs::read(file)
            {
                problem(format!("{key}: cannot read {}: {e}", file.display()));
            }
        }
    }
    if let Some(message) = data_dir_problem(&config.data_dir) {
        problem(message);
    }
    problems
}

/// Why the server could not keep its data in `dir`, if it could not.
fn data_dir_problem(dir: &Path) -> Option<String> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let metadata = std::fs::metadata(existing).ok()?;
    if !metadata.is_dir() {
        return Some(format!(
            "server.data_dir: {} is not a directory",
            existing.display()
        ));
    }
    if metadata.permissions().readonly() {
        return Some(format!(
            "server.data_dir: {} is read-only",
            existing.display()
        ));
    }
    None
}

/// A message if `cert` has expired.
fn expired(cert: &[u8], key: &str) -> Option<String> {
    let not_after = crate::tls::not_after(cert)?;
    let now = crate::clock::now_ms() / 1000;
    (not_after < now as i64).then(|| {
        format!(
            "{key}: the certificate expired at {}",
            crate::clock::rfc3339(not_after.max(0) as u64 * 1000)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<String> {
        check_text(text, Vec::new())
            .iter()
            .map(|p| p.show("homecmp.toml"))
            .collect()
    }

    #[test]
    fn a_syntax_error_is_the_only_problem_and_says_where() {
        let problems =
            found("[server]\nlisten = \"127.0.0.1:8443\"\n[limits\nmax_connections = 5\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("homecmp.toml:3:"), "{problems:?}");
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_found_at_its_place() {
        let text = "\
[server]
listen = \"127.0.0.1:8443\"
lisen = \"oops\"

[limits]
max_connections = \"many\"
penalty_secs = 30
header_read_timeout_ms = [
  1,
  2,
]
idle_timeout_ms = -5

[nonsense]
a = 1
";
        let problems = found(text);
        assert_eq!(problems.len(), 5, "{problems:#?}");
        for (problem, line) in problems.iter().zip(["3", "6", "8", "12", "14"]) {
            assert!(
                problem.starts_with(&format!("homecmp.toml:{line}:")),
                "{problem} not at line {line}: {problems:#?}"
            );
        }
        assert!(problems[0].contains("lisen"), "{problems:#?}");
        assert!(problems[4].contains("nonsense"), "{problems:#?}");
    }

    #[test]
    fn range_checks_are_placed_at_their_key_and_all_reported() {
        let text = "\
[server]
scan_stats_flush_secs = 0
listen = \"not an address\"
";
        let problems = found(text);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("homecmp.toml:2:1: server.scan_stats_flush_secs")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("homecmp.toml:3:1: server.listen")),
            "{problems:#?}"
        );
    }

    #[test]
    fn the_embedded_defaults_and_the_example_are_fine() {
        assert_eq!(found(""), Vec::<String>::new());
        let example = include_str!("../homecmp.example.toml");
        assert_eq!(found(example), Vec::<String>::new());
    }
}
