#![no_main]
// Harness: homecmp::fuzzing::radius (its promises are documented there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| homecmp::fuzzing::radius(data));
