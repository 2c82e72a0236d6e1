//! See `fulcrum_proxy::fuzz::chunked`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_proxy::fuzz::chunked(data));
