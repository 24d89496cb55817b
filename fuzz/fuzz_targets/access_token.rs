#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchard::fuzz::access_token(data));
