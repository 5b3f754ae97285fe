#![no_main]
// Harness: homecmp::fuzzing::msisdn (its promises are documented there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| homecmp::fuzzing::msisdn(data));
