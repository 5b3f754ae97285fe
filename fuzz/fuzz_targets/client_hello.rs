#![no_main]
// Harness: homecmp::fuzzing::client_hello (its promises are documented there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| homecmp::fuzzing::client_hello(data));
