#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchard::fuzz::channels_message(data));
