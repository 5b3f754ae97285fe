#![no_main]
// Harness: homecmp::fuzzing::code_row (its promises are documented there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| homecmp::fuzzing::code_row(data));
