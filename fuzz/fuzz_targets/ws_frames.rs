#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchard::fuzz::ws_frames(data));
