#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchard::fuzz::rest_request(data));
