//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through
//! its harness (`homecmp::fuzzing`), as an ordinary test: inputs that once
//! found new paths keep being checked on every build, without cargo-fuzz.

use std::path::Path;

#[test]
fn every_corpus_replays_without_a_panic() {
    let root = Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("fuzz/corpus");
    for &(target, harness) in homecmp::fuzzing::TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no corpus for {target} at {}: {e}", dir.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&input));
            assert!(outcome.is_ok(), "{target}: {} panics", path.display());
            replayed += 1;
        }
        assert!(replayed > 0, "the {target} corpus is empty");
    }
}
