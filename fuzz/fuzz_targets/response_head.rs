//! See `fulcrum_proxy::fuzz::response_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_proxy::fuzz::response_head(data));
