//! The load generator's source reads top to bottom (issue 25): no import
//! circle between its modules (a module that uses another which uses it
//! back, directly or through others), and no function over 80 lines unless
//! it is a flat table and a comment right above it says so.
//!
//! Read from the source text, with comments and literals blanked out first,
//! so it needs no tool beyond the test itself. What counts as a use:
//! `crate::`, `super::` and `self::` paths (in `use` trees or inline) and a
//! child module named bare (`tcp::connect` in `client/mod.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MAX_FN_LINES: usize = 80;
/// Written in a comment right above a longer function that is a flat table.
const FLAT_TABLE_MARK: &str = "flat table";

/// A module path: `[]` for the crate root, `["client", "tcp"]` for `client/tcp.rs`.
type Module = Vec<String>;

struct SourceFile {
    name: String,
    module: Module,
    text: String,
}

#[test]
fn no_import_circle_between_the_modules() {
    let files = read_src(
        &Path::new(
            &std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
        )
        .join("src"),
    );
    assert!(files.len() > 10, "read the loadgen's sources");
    let graph = import_graph(&files);
    assert!(
        graph[&vec!["client".to_owned()]].contains(&vec!["client".to_owned(), "tcp".to_owned()]),
        "the graph sees a child named bare: {graph:?}"
    );
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "import circle: {} (move what they share down to a module both can use)",
            show_path(&circle)
        );
    }
}

#[test]
fn no_function_over_80_lines_but_flat_tables() {
    let files = read_src(
        &Path::new(
            &std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
        )
        .join("src"),
    );
    let long: Vec<String> = files.iter().flat_map(long_functions).collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them into named steps, or mark a flat \
         table with a comment saying \"{FLAT_TABLE_MARK}\" and why):\n{}",
        long.join("\n")
    );
}

/// The checks themselves catch what they are for.
#[test]
fn the_checks_see_a_circle_and_a_long_function() {
    let file = |name: &str, text: &str| source(name, text.to_owned());
    let circle = [
        file("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        file("a.rs", "use crate::{\n    b::{Thing, other::More},\n};\n"),
        file("b.rs", "pub fn f() { super::c::g() }\n"),
        // Comments and strings do not count: "crate::a::" here is no use.
        file(
            "c.rs",
            "// crate::a::x\nfn g() -> &'static str { \"crate::b::\" }\nfn h() { crate::a::k() }\n",
        ),
    ];
    let found = find_circle(&import_graph(&circle)).expect("a circle a -> b -> c -> a");
    assert_eq!(show_path(&found), "a -> b -> c -> a");
    let tree = [
        file("lib.rs", "pub mod a;\npub mod b;\n"),
        file(
            "a.rs",
            "use crate::b::Thing;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
        file("b.rs", "pub struct Thing;\n"),
    ];
    assert_eq!(
        find_circle(&import_graph(&tree)),
        None,
        "tests' super:: is their own module"
    );

    let body = "    let _ = ['{', '\\''];\n    let _ = \"}}}\";\n".repeat(40);
    let long = file(
        "a.rs",
        &format!("fn long(_: [u8; 4]) {{\n{body}}}\n\nfn short<'a>(x: &'a str) {{ }}\n"),
    );
    let found = long_functions(&long);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("a.rs:1 long: 82 lines"), "{found:?}");
    let table = file(
        "a.rs",
        &format!("// A flat table: one row per kind.\nfn long() {{\n{body}}}\n"),
    );
    assert!(long_functions(&table).is_empty());
}

fn read_src(src: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable src") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("src/main.rs")
            {
                let name = path
                    .strip_prefix(src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push(source(&name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

fn source(name: &str, text: String) -> SourceFile {
    let mut module: Module = name
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if matches!(module.last().map(String::as_str), Some("lib" | "mod")) {
        module.pop();
    }
    SourceFile {
        name: name.to_owned(),
        module,
        text,
    }
}

/// `text` with every comment and string or char literal blanked (spaces;
/// newlines kept, so lines still count).
fn blank(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let keep_lines = |out: &mut String, from: &[char]| {
        out.extend(from.iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let end = if rest.starts_with(&['/', '/']) {
            i + rest.iter().position(|&c| c == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            block_comment_end(&chars, i)
        } else if rest[0] == '"' {
            string_end(&chars, i + 1, 0)
        } else if (rest[0] == 'r' || rest.starts_with(&['b', 'r'])) && !ident_before {
            let start = i + if rest[0] == 'b' { 2 } else { 1 };
            let hashes = chars[start..].iter().take_while(|&&c| c == '#').count();
            if chars.get(start + hashes) == Some(&'"') {
                string_end(&chars, start + hashes + 1, hashes)
            } else {
                i
            }
        } else if rest[0] == '\'' && rest.get(1) == Some(&'\\') && rest.len() > 3 {
            // An escape: its first character may be a quote (`'\''`).
            i + 3 + rest[3..].iter().position(|&c| c == '\'').unwrap_or(0) + 1
        } else if rest[0] == '\'' && rest.get(2) == Some(&'\'') {
            i + 3
        } else {
            i
        };
        if end > i {
            keep_lines(&mut out, &chars[i..end.min(chars.len())]);
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Just past the `*/` that closes the (possibly nested) comment at `start`.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let (mut depth, mut i) = (0, start);
    while i + 1 < chars.len() {
        match (chars[i], chars[i + 1]) {
            ('/', '*') => (depth, i) = (depth + 1, i + 2),
            ('*', '/') if depth == 1 => return i + 2,
            ('*', '/') => (depth, i) = (depth - 1, i + 2),
            _ => i += 1,
        }
    }
    chars.len()
}

/// Just past the closing quote of a string whose text starts at `from`
/// (`hashes` for a raw string's `#`s, which has no escapes).
fn string_end(chars: &[char], from: usize, hashes: usize) -> usize {
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '\\' if hashes == 0 => i += 2,
            '"' if chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes =>
            {
                return i + 1 + hashes;
            }
            _ => i += 1,
        }
    }
    chars.len()
}

/// The line of the `}` that closes the first block opening on line `first`
/// or after (lines of blanked text); `None` when a `;` ends the item first
/// (a declaration without a body).
fn block_end(lines: &[&str], first: usize) -> Option<usize> {
    let (mut depth, mut brackets) = (0usize, 0usize);
    let mut opened = false;
    for (n, line) in lines.iter().enumerate().skip(first) {
        for c in line.chars() {
            match c {
                '{' => (depth, opened) = (depth + 1, true),
                // A `}` closing what `first` does not open: no block here.
                '}' if depth == 0 => return None,
                '}' => depth -= 1,
                '(' | '[' => brackets += 1,
                ')' | ']' => brackets = brackets.saturating_sub(1),
                // A declaration without a body (`[u8; 4]` in it is no end).
                ';' if !opened && brackets == 0 => return None,
                _ => {}
            }
            if opened && depth == 0 {
                return Some(n);
            }
        }
    }
    None
}

/// The name of the function declared on `line`, if one is.
fn declared_fn(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let mut word = words.next()?;
    while word.starts_with("pub") || ["const", "async", "unsafe", "extern"].contains(&word) {
        word = words.next()?;
    }
    let name = words.next().filter(|_| word == "fn")?;
    name.split(['(', '<']).next()
}

fn long_functions(file: &SourceFile) -> Vec<String> {
    let blanked = blank(&file.text);
    let lines: Vec<&str> = blanked.lines().collect();
    let original: Vec<&str> = file.text.lines().collect();
    let mut long = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let (Some(name), Some(end)) = (declared_fn(line), block_end(&lines, n)) else {
            continue;
        };
        let length = end - n + 1;
        let comment_above = original[..n]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("//") || l.trim_start().starts_with("#["))
            .any(|l| l.to_lowercase().contains(FLAT_TABLE_MARK));
        if length > MAX_FN_LINES && !comment_above {
            long.push(format!("{}:{} {name}: {length} lines", file.name, n + 1));
        }
    }
    long
}

/// Which modules each module uses (itself and its inline test modules aside).
fn import_graph(files: &[SourceFile]) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    let mut graph = BTreeMap::new();
    for file in files {
        let mut used = BTreeSet::new();
        for (code, from) in inline_modules_apart(file) {
            for path in paths(&code) {
                if let Some(target) = resolve(&from, &file.module, &path, &modules) {
                    used.insert(target);
                }
            }
        }
        used.remove(&file.module);
        graph.insert(file.module.clone(), used);
    }
    graph
}

/// A file's blanked code in pieces, each with the module it is written in:
/// the file's module, or an inline module in it (`mod tests { ... }`), whose
/// `super` is the file's module.
fn inline_modules_apart(file: &SourceFile) -> Vec<(String, Module)> {
    let blanked = blank(&file.text);
    let lines: Vec<&str> = blanked.lines().collect();
    let inline = child(&file.module, "inline");
    let mut pieces = Vec::new();
    let (mut start, mut n) = (0, 0);
    while n < lines.len() {
        let opens_module = lines[n].trim_start().starts_with("mod ") && lines[n].contains('{');
        match opens_module.then(|| block_end(&lines, n)).flatten() {
            Some(end) => {
                pieces.push((lines[start..n].join("\n"), file.module.clone()));
                pieces.push((lines[n..=end].join("\n"), inline.clone()));
                (start, n) = (end + 1, end + 1);
            }
            None => n += 1,
        }
    }
    pieces.push((lines[start..].join("\n"), file.module.clone()));
    pieces
}

/// Every path in `code` as segments: `use` trees expanded, inline paths
/// taken from their first segment on.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let tree = statement.strip_prefix("use ").or_else(|| {
            statement
                .split_once(" use ")
                .filter(|(v, _)| v.starts_with("pub"))
                .map(|(_, t)| t)
        });
        match tree {
            Some(tree) => expand(tree, &mut Vec::new(), &mut found),
            None => found.extend(inline_paths(statement)),
        }
    }
    found
}

/// `a::{b, c::d}` into `[a, b]` and `[a, c, d]`.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    match tree.find('{') {
        Some(open) => {
            let depth = prefix.len();
            prefix.extend(segments(&tree[..open]));
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let (mut level, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => level += 1,
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        expand(&inner[start..i], prefix, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&inner[start..], prefix, out);
            prefix.truncate(depth);
        }
        None if !tree.is_empty() => {
            let name = tree.split(" as ").next().unwrap_or(tree);
            out.push(prefix.iter().cloned().chain(segments(name)).collect());
        }
        None => {}
    }
}

fn segments(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Paths in code outside `use`: every `word::word...` that starts where no
/// path goes on from before.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        let continues = k > 0 && (is_ident(chars[k - 1].1) || chars[k - 1].1 == ':');
        if !is_ident(c) || continues {
            continue;
        }
        let len = code[i..]
            .find(|c: char| !(is_ident(c) || c == ':'))
            .unwrap_or(code.len() - i);
        let path: Vec<String> = segments(&code[i..i + len]).collect();
        if path.len() > 1 {
            found.push(path);
        }
    }
    found
}

/// The module `path`, written in module `from` (of file module `file`),
/// refers to: the longest known module it names, or `None` for other crates.
fn resolve(
    from: &Module,
    file: &Module,
    path: &[String],
    modules: &BTreeSet<Module>,
) -> Option<Module> {
    let (mut module, rest) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "super" if from.len() > file.len() => (file.clone(), &path[1..]),
        "super" => (from[..from.len().checked_sub(1)?].to_vec(), &path[1..]),
        "self" => (from.clone(), &path[1..]),
        // A child of this file's module, named bare.
        first if modules.contains(&child(file, first)) => (file.clone(), path),
        _ => return None,
    };
    if from.len() > file.len() && module == *from {
        module = file.clone();
    }
    for segment in rest {
        let deeper = child(&module, segment);
        if !modules.contains(&deeper) {
            break;
        }
        module = deeper;
    }
    Some(module)
}

fn child(module: &Module, name: &str) -> Module {
    let mut child = module.clone();
    child.push(name.to_owned());
    child
}

/// A circle of uses, first module repeated at the end, if there is one.
fn find_circle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        module: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut circle = path[at..].to_vec();
            circle.push(module.clone());
            return Some(circle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.clone());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(module.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

fn show_path(modules: &[Module]) -> String {
    let name = |m: &Module| {
        if m.is_empty() {
            "crate".to_owned()
        } else {
            m.join("::")
        }
    };
    modules.iter().map(name).collect::<Vec<_>>().join(" -> ")
}
