//! See `fulcrum_proxy::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fulcrum_proxy::fuzz::config(data));
