//! See `fulcrum_proxy::fuzz::request_framing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_proxy::fuzz::request_framing(data));
