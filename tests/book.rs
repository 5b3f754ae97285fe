//! The README and the book (`docs/book`, mdBook) hold together:
//!
//! 1. every chapter under `docs/book/src` is listed in `SUMMARY.md`, and
//!    every entry there is a chapter;
//! 2. every relative link of the README and of the book resolves: to a
//!    file or directory of the checkout, and, where it names an `#anchor`
//!    in a markdown file (its own, for a bare `#anchor`), to a heading of
//!    that file (links to http(s) and mailto are not followed);
//! 3. the README stays short: the rest belongs in the book;
//! 4. no `sh` code block is empty, and every code fence is closed (the tests
//!    that run blocks "as printed" find them by these fences).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The package's directory, read when the test runs (not when it was
/// compiled: a build cache shared between checkouts would point it at
/// another one).
fn package() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
/// The README holds the way to a running server and a first scan; the
/// rest is in the book.
const README_MAX_LINES: usize = 250;

fn book_src() -> PathBuf {
    package().join("docs/book/src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.md` file under `docs/book/src` but `SUMMARY.md`, relative to it.
fn chapters() -> BTreeSet<PathBuf> {
    let src = book_src();
    let mut found = BTreeSet::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                let relative = path.strip_prefix(&src).unwrap().to_owned();
                if relative != Path::new("SUMMARY.md") {
                    found.insert(relative);
                }
            }
        }
    }
    found
}

/// The README, `SUMMARY.md` and every chapter: path and text.
fn documents() -> Vec<(PathBuf, String)> {
    let src = book_src();
    let mut paths = vec![package().join("README.md"), src.join("SUMMARY.md")];
    paths.extend(chapters().into_iter().map(|c| src.join(c)));
    paths
        .into_iter()
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect()
}

/// `path` relative to the checkout, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(package())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The lines of `text` outside code fences, with their numbers (from 1).
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (at, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push((at + 1, line));
        }
    }
    lines
}

/// The lines of `text` outside code fences with inline code left out (a
/// `](` inside backticks is no link), with their numbers. A code span may go
/// on over a line break, never past a blank line or a fence.
fn without_code(text: &str) -> Vec<(usize, String)> {
    let mut in_code = false;
    let mut last = 0;
    let mut lines = Vec::new();
    for (at, line) in prose(text) {
        if at != last + 1 || line.trim().is_empty() {
            in_code = false;
        }
        last = at;
        let mut kept = String::new();
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                kept.push(c);
            }
        }
        lines.push((at, kept));
    }
    lines
}

/// The target of every markdown link `[...](target)` outside code, with
/// its line number.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, line) in without_code(text) {
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            found.push((at, target.to_owned()));
            rest = &rest[end..];
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of `text`'s headings, a repeated one numbered as GitHub
/// numbers it (`name`, `name-1`, ...).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose(text) {
        let level = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&level) || !line[level..].starts_with(' ') {
            continue;
        }
        let base = slug(line[level..].trim().trim_end_matches('#').trim());
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.insert(match *count {
            0 => base,
            n => format!("{base}-{n}"),
        });
        *count += 1;
    }
    anchors
}

#[test]
fn every_chapter_is_in_the_summary_and_every_entry_is_a_chapter() {
    let src = book_src();
    let book = read(&package().join("docs/book/book.toml"));
    assert!(
        book.contains("src = \"src\""),
        "docs/book/book.toml:\n{book}"
    );
    let summary = read(&src.join("SUMMARY.md"));
    let entries: BTreeSet<PathBuf> = links(&summary)
        .into_iter()
        .map(|(at, target)| {
            let path = src.join(&target);
            assert!(
                target.ends_with(".md") && path.is_file(),
                "docs/book/src/SUMMARY.md:{at}: {target} is no chapter"
            );
            path.strip_prefix(&src).unwrap().to_owned()
        })
        .collect();
    let chapters = chapters();
    assert!(!chapters.is_empty());
    for chapter in &chapters {
        assert!(
            entries.contains(chapter),
            "docs/book/src/{} is not in SUMMARY.md",
            chapter.display()
        );
    }
}

#[test]
fn every_relative_link_resolves_to_a_file_and_a_heading() {
    let mut checked = 0;
    for (path, text) in documents() {
        let dir = path.parent().unwrap();
        for (at, target) in links(&text) {
            if target.is_empty()
                || ["http:", "https:", "mailto:"]
                    .iter()
                    .any(|s| target.starts_with(s))
            {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = match file {
                "" => path.clone(),
                file => dir.join(file),
            };
            assert!(
                linked.exists(),
                "{}:{at}: {target}: no {}",
                shown(&path),
                shown(&linked)
            );
            if let Some(anchor) = anchor
                && linked.extension().is_some_and(|e| e == "md")
            {
                assert!(
                    anchors(&read(&linked)).contains(anchor),
                    "{}:{at}: {target}: no heading of {} has the anchor #{anchor}",
                    shown(&path),
                    shown(&linked)
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser right?"
    );
}

#[test]
fn the_readme_stays_short() {
    let readme = read(&package().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines < README_MAX_LINES,
        "README.md has {lines} lines, {README_MAX_LINES} or more: move the detail into a chapter of docs/book/src"
    );
}

#[test]
fn every_fence_closes_and_no_sh_block_is_empty() {
    for (path, text) in documents() {
        let mut open: Option<(usize, String, usize)> = None;
        for (at, line) in text.lines().enumerate() {
            let at = at + 1;
            let Some(info) = line.strip_prefix("```") else {
                if let Some((_, _, filled)) = &mut open
                    && !line.trim().is_empty()
                {
                    *filled += 1;
                }
                continue;
            };
            match open.take() {
                None => open = Some((at, info.trim().to_owned(), 0)),
                Some((start, lang, filled)) => assert!(
                    lang != "sh" || filled > 0,
                    "{}:{start}: an empty sh block",
                    shown(&path)
                ),
            }
        }
        if let Some((start, _, _)) = open {
            panic!("{}:{start}: a code fence that never closes", shown(&path));
        }
    }
}

/// The parsers above on the cases the chapters have: a heading with
/// punctuation, a `#` comment in a shell block, a heading twice; links in
/// and out of inline code, one whose code span began on the line before.
#[test]
fn headings_and_links_are_read_as_github_reads_them() {
    let text = "# homecmp\n\n## Federation: codes of other CMPs (§9.3.2)\n\
                ```sh\n# not a heading\n```\n### RADIUS accounting: the operator's identity feed\n\
                ## Layout\n## Layout\n";
    let expected = [
        "homecmp",
        "federation-codes-of-other-cmps-932",
        "radius-accounting-the-operators-identity-feed",
        "layout",
        "layout-1",
    ];
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(anchors(text), expected);
    let text = "[a](b.md#c) `[x](y)` and [d](https://e/f) and [g](#h \"title\")\n\
                a `span that\ngoes on`, then [i](j.md)\n";
    let expected: Vec<(usize, String)> = vec![
        (1, "b.md#c".to_owned()),
        (1, "https://e/f".to_owned()),
        (1, "#h".to_owned()),
        (3, "j.md".to_owned()),
    ];
    assert_eq!(links(text), expected);
}
