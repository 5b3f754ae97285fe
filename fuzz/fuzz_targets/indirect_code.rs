#![no_main]
// Harness: homecmp::fuzzing::indirect_code (its promises are documented there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| homecmp::fuzzing::indirect_code(data));
