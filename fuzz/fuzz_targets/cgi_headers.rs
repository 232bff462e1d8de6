//! Fuzzes `fwatchdog::fuzzing::cgi_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::cgi_headers(data));
