//! Codes at scale: bulk import and export (`POST /admin/v1/codes:import`,
//! `GET /admin/v1/codes:export`, `homecmp codes import|export`).
//!
//! An import is a stream of rows, one per line: NDJSON objects
//! `{"code": "...", "target": "https://...", "rules": [...]}` (`rules`
//! optional: [`RuleBody`]), or CSV `code,target` (no rules; a
//! first line `code,target` is a header; fields may be quoted). Rows are
//! read as the body arrives and taken in batches of [`BATCH`]: a batch
//! whose rows are all valid is written as one durable append (one fsync,
//! all or nothing), a batch with a bad row is not written at all, and every
//! bad row is reported with its line number and its batch. A batch the
//! store fails to write ends the import, reported with its number and its
//! lines (the batches before it are written). With `dry_run` nothing is
//! written. The export is NDJSON `{"code", "target", "rules", "seq"}` in the order
//! the codes were last registered (by `seq`), which the import takes back
//! as it is; it streams, a page of codes at a time ([`export`]), so its
//! memory does not grow with the number of codes.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::core::Policy;
use crate::core::targeting::{Network, Platform, TargetRule};
use crate::store::index::Reader;
use crate::store::{Store, StoreError};
use crate::wire::IndirectCode;

/// Rows per batch: the unit that is written whole or not at all.
pub const BATCH: usize = 10_000;
/// Longest line read; a longer one is a bad row.
pub const MAX_LINE: usize = 64 * 1024;
/// Errors listed in a report (all are counted).
const MAX_LISTED: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    /// From a request's `Content-Type`: `text/csv` is CSV, anything else
    /// NDJSON.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type.is_some_and(|t| t.trim().starts_with("text/csv")) {
            true => Format::Csv,
            false => Format::Ndjson,
        }
    }
}

/// A resolution rule as the admin API, the import and the export write it
/// (the log keeps a `TargetRule`, with times in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Rule)]
pub struct RuleBody {
    /// Language ranges (`fr`, `pt-BR`): the rule holds when the client
    /// accepts one of them (q > 0). Absent: any language.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16, example = json!(["fr", "pt-BR"]))]
    pub languages: Vec<String>,
    /// Device platforms (from `User-Agent`, or the client hint). Absent:
    /// any platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<Platform>,
    /// On the MNO's network or off it, as the identity decided. Absent:
    /// either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub network: Option<Network>,
    /// RFC 3339: from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    pub from: Option<String>,
    /// RFC 3339: until then (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    pub until: Option<String>,
    /// Where the rule sends the client: an http(s) URL.
    #[schema(format = "uri", max_length = 2048)]
    pub target: String,
}

/// The rules of `bodies`, checked ([`crate::core::targeting::check_rules`]).
pub fn rules_of(bodies: Vec<RuleBody>) -> Result<Vec<TargetRule>, String> {
    let time = |i: usize, name: &str, text: Option<String>| -> Result<Option<u64>, String> {
        let Some(text) = text else { return Ok(None) };
        let at = humantime::parse_rfc3339_weak(&text)
            .map_err(|e| format!("rule {i}: {name} {text:?} is not an RFC 3339 time ({e})"))?;
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("rule {i}: {name} is before 1970"))?
            .as_millis();
        Ok(Some(u64::try_from(ms).unwrap_or(u64::MAX)))
    };
    let rules = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            Ok(TargetRule {
                languages: body.languages,
                platforms: body.platforms,
                network: body.network,
                from_ms: time(i, "from", body.from)?,
                until_ms: time(i, "until", body.until)?,
                target: body.target,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    crate::core::targeting::check_rules(&rules)?;
    Ok(rules)
}

/// A rule's time in RFC 3339: to the second when it falls on one (as
/// operators write them), else to the millisecond.
fn rule_time(at_ms: u64) -> String {
    match at_ms % 1000 {
        0 => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at_ms / 1000);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => crate::clock::rfc3339(at_ms),
    }
}

/// `rules` as the API writes them.
pub fn bodies_of(rules: &[TargetRule]) -> Vec<RuleBody> {
    rules
        .iter()
        .map(|rule| RuleBody {
            languages: rule.languages.clone(),
            platforms: rule.platforms.clone(),
            network: rule.network,
            from: rule.from_ms.map(rule_time),
            until: rule.until_ms.map(rule_time),
            target: rule.target.clone(),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    code: String,
    target: String,
    #[serde(default)]
    rules: Vec<RuleBody>,
    /// Present in exports; ignored on import (the log assigns sequences).
    #[serde(default, rename = "seq")]
    _seq: Option<u64>,
}

/// A bad row: its line in the body (1-based) and its batch (1-based: batch
/// `n` holds rows `(n - 1) * BATCH + 1` to `n * BATCH`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RowError {
    pub line: u64,
    pub batch: u64,
    pub error: String,
}

/// A batch the store did not write, and the lines its rows came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, thiserror::Error, utoipa::ToSchema)]
#[error("batch {batch} (lines {first_line} to {last_line}) was not written: {error}")]
pub struct BatchNotWritten {
    pub batch: u64,
    pub first_line: u64,
    pub last_line: u64,
    pub error: String,
}

/// What an import did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ImportReport)]
pub struct Report {
    pub dry_run: bool,
    /// Rows read (blank lines and a CSV header are not rows).
    pub rows: u64,
    /// Rows written (0 on a dry run).
    pub applied: u64,
    /// Valid rows not written because their batch had a bad row.
    pub skipped: u64,
    pub batches_applied: u64,
    pub batches_rejected: u64,
    pub errors_total: u64,
    /// The first 1000 bad rows.
    pub errors: Vec<RowError>,
    /// The batch whose write failed, which ended the import.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub not_written: Option<BatchNotWritten>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the request body broke off after line {line} (batch {batch}): {error}")]
    Body {
        line: u64,
        batch: u64,
        error: String,
    },
    /// The store refused a batch: the report says which (`not_written`)
    /// and what was written before it.
    #[error("{}", report.not_written.as_ref().map_or_else(String::new, ToString::to_string))]
    NotWritten {
        report: Box<Report>,
        source: StoreError,
    },
}

/// One row: the code (canonical, a prefix this CMP owns), its target and
/// its rules (NDJSON only).
pub fn parse_row(
    policy: &crate::core::Policy,
    format: Format,
    line: &str,
) -> Result<(IndirectCode, String, Vec<TargetRule>), String> {
    let (code, target, rules) = match format {
        Format::Ndjson => {
            let row: Row =
                serde_json::from_str(line).map_err(|e| format!("not a code row: {e}"))?;
            (row.code, row.target, rules_of(row.rules)?)
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(line.as_bytes());
            let record = reader
                .records()
                .next()
                .ok_or("an empty row")?
                .map_err(|e| format!("not a CSV row: {e}"))?;
            match (record.get(0), record.get(1), record.len()) {
                (Some(code), Some(target), 2) => (code.to_owned(), target.to_owned(), Vec::new()),
                _ => {
                    return Err(format!(
                        "expected 2 fields (code,target), found {}",
                        record.len()
                    ));
                }
            }
        }
    };
    let code = IndirectCode::parse(code.trim()).map_err(|e| format!("code {code:?}: {e}"))?;
    if !policy.owns(&code) {
        return Err(format!(
            "code {}: its routing prefix is not this CMP's",
            code.as_str()
        ));
    }
    let target = target.trim().to_owned();
    if !crate::wire::valid_target(&target) {
        return Err(format!(
            "target {target:?}: not an http(s) URL of at most 2048 characters"
        ));
    }
    Ok((code, target, rules))
}

/// Reads `body` and imports it (see the module docs), each registration
/// recorded as `actor`'s.
pub async fn import(
    store: &Store,
    policy: &Policy,
    body: impl Stream<Item = Result<Bytes, String>>,
    format: Format,
    dry_run: bool,
    actor: Option<&str>,
) -> Result<Report, ImportError> {
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    let mut lines = Lines::default();
    let mut batch = Batch::first();
    futures_util::pin_mut!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| ImportError::Body {
            line: lines.number,
            batch: batch.number,
            error,
        })?;
        for (number, line) in lines.feed(&chunk) {
            batch.take(policy, format, number, line, &mut report);
            if batch.rows == BATCH {
                batch = batch.finish(store, dry_run, actor, &mut report).await?;
            }
        }
    }
    if let Some((number, line)) = lines.finish() {
        batch.take(policy, format, number, line, &mut report);
    }
    batch.finish(store, dry_run, actor, &mut report).await?;
    Ok(report)
}

/// The rows of one batch.
struct Batch {
    /// 1-based.
    number: u64,
    rows: usize,
    /// Lines of its first and last row (0 while it has none).
    first_line: u64,
    last_line: u64,
    valid: Vec<(IndirectCode, String, Vec<TargetRule>)>,
    bad: bool,
}

impl Batch {
    fn first() -> Self {
        Self::numbered(1)
    }

    fn numbered(number: u64) -> Self {
        Self {
            number,
            rows: 0,
            first_line: 0,
            last_line: 0,
            valid: Vec::new(),
            bad: false,
        }
    }

    fn take(
        &mut self,
        policy: &Policy,
        format: Format,
        number: u64,
        line: Result<String, String>,
        report: &mut Report,
    ) {
        let text = match &line {
            Ok(line) => line.trim(),
            // Unreadable (too long, not UTF-8): still a row, and a bad one.
            Err(_) => "",
        };
        let header =
            format == Format::Csv && number == 1 && text.eq_ignore_ascii_case("code,target");
        if line.is_ok() && (text.is_empty() || header) {
            return;
        }
        report.rows += 1;
        self.rows += 1;
        if self.first_line == 0 {
            self.first_line = number;
        }
        self.last_line = number;
        let row = match &line {
            Ok(_) => parse_row(policy, format, text),
            Err(unreadable) => Err(unreadable.clone()),
        };
        match row {
            Ok(row) => self.valid.push(row),
            Err(e) => self.bad_row(number, e, report),
        }
    }

    fn bad_row(&mut self, line: u64, error: String, report: &mut Report) {
        self.bad = true;
        report.errors_total += 1;
        if report.errors.len() < MAX_LISTED {
            report.errors.push(RowError {
                line,
                batch: self.number,
                error,
            });
        }
    }

    /// Writes the batch if all its rows are good (unless `dry_run`), and
    /// returns the next one. A failed write ends the import, with the
    /// report so far.
    async fn finish(
        self,
        store: &Store,
        dry_run: bool,
        actor: Option<&str>,
        report: &mut Report,
    ) -> Result<Batch, ImportError> {
        if self.rows == 0 {
            return Ok(self);
        }
        let next = Batch::numbered(self.number + 1);
        if self.bad {
            report.batches_rejected += 1;
            report.skipped += self.valid.len() as u64;
            return Ok(next);
        }
        if !dry_run {
            let rows = self.valid.len() as u64;
            let stamp = crate::store::Stamp {
                at_ms: crate::clock::now_ms(),
                actor: actor.map(str::to_owned),
            };
            let written = store.register_codes(self.valid, stamp).await;
            if let Err(source) = written {
                report.not_written = Some(BatchNotWritten {
                    batch: self.number,
                    first_line: self.first_line,
                    last_line: self.last_line,
                    error: source.to_string(),
                });
                let report = Box::new(std::mem::take(report));
                return Err(ImportError::NotWritten { report, source });
            }
            report.applied += rows;
        }
        report.batches_applied += 1;
        Ok(next)
    }
}

/// Splits a byte stream into numbered lines (1-based); a line longer than
/// [`MAX_LINE`] or not UTF-8 is an `Err`.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    number: u64,
    too_long: bool,
}

impl Lines {
    fn feed(&mut self, mut chunk: &[u8]) -> Vec<(u64, Result<String, String>)> {
        let mut out = Vec::new();
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            self.push(&chunk[..end]);
            out.push(self.take());
            chunk = &chunk[end + 1..];
        }
        self.push(chunk);
        out
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.too_long = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn take(&mut self) -> (u64, Result<String, String>) {
        self.number += 1;
        let bytes = std::mem::take(&mut self.partial);
        let line = match std::mem::take(&mut self.too_long) {
            true => Err(format!("longer than {MAX_LINE} bytes")),
            false => String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned()),
        };
        (self.number, line)
    }

    fn finish(mut self) -> Option<(u64, Result<String, String>)> {
        (!self.partial.is_empty() || self.too_long).then(|| self.take())
    }
}

/// Codes per page of an export: what it holds in memory at once (about
/// 20 MB with the page's text), whatever the number of codes; each page is
/// two scans of the code map.
pub const EXPORT_PAGE: usize = 100_000;

/// One line of an export.
#[derive(Serialize)]
struct ExportLine<'a> {
    code: &'a str,
    target: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rules: Vec<RuleBody>,
    seq: u64,
}

/// Where an export has got to: the `seq` of the last code sent.
enum Cursor {
    After(crate::store::Seq),
    Done,
}

/// Every code as NDJSON lines, by `seq`, one chunk per page of `page_len`
/// codes ([`Index::codes_after_seq`](crate::store::index::Index::codes_after_seq)):
/// nothing is read before the body asks for it, and only one page is held.
/// Each page is read off the async threads (two scans of the code map).
pub fn export(
    store: Store,
    page_len: usize,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::try_unfold(Cursor::After(0), move |cursor| {
        let store = store.clone();
        async move {
            let after = match cursor {
                Cursor::After(seq) => seq,
                Cursor::Done => return Ok(None),
            };
            let page =
                tokio::task::spawn_blocking(move || export_page(store.index(), after, page_len))
                    .await
                    .map_err(std::io::Error::other)?;
            Ok(page)
        }
    })
}

/// The lines of the page after `after`, and where the next page starts
/// (`Done` after a short page: no scan to find nothing); `None` past the
/// last code.
fn export_page(
    index: &crate::store::index::Index,
    after: crate::store::Seq,
    page_len: usize,
) -> Option<(Bytes, Cursor)> {
    let page = index.codes_after_seq(after, page_len, Reader::Operator);
    let (_, last) = page.last()?;
    let next = match page.len() < page_len {
        true => Cursor::Done,
        false => Cursor::After(last.seq),
    };
    let mut text = Vec::with_capacity(page.len() * 96);
    for (code, entry) in &page {
        let rules = entry.rules.as_ref().map(|r| bodies_of(r.rules()));
        let line = ExportLine {
            code,
            target: &entry.target,
            rules: rules.unwrap_or_default(),
            seq: entry.seq,
        };
        serde_json::to_writer(&mut text, &line).expect("a code line serialises");
        text.push(b'\n');
    }
    Some((Bytes::from(text), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_across_chunks_and_long_ones_refused() {
        let mut lines = Lines::default();
        let mut got = lines.feed(b"a\nb");
        got.extend(lines.feed(b"c\n\n"));
        got.extend(lines.feed(&vec![b'x'; MAX_LINE + 1]));
        got.extend(lines.feed(b"\nlast"));
        got.extend(lines.finish());
        let shown: Vec<(u64, Result<String, String>)> = got;
        assert_eq!(shown[0], (1, Ok("a".into())));
        assert_eq!(shown[1], (2, Ok("bc".into())));
        assert_eq!(shown[2], (3, Ok("".into())));
        assert_eq!(shown[3].0, 4);
        assert!(shown[3].1.is_err());
        assert_eq!(shown[4], (5, Ok("last".into())));
        assert_eq!(shown.len(), 5);
    }
}
