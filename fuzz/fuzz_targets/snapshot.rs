#![no_main]
// Harness: homecmp::fuzzing::snapshot (its promises are documented there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| homecmp::fuzzing::snapshot(data));
