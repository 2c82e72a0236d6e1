//! See `fulcrum_proxy::fuzz::request_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_proxy::fuzz::request_head(data));
