#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchard::fuzz::plugin_reply(data));
