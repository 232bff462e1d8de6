//! Fuzzes `fwatchdog::fuzzing::env_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::env_config(data));
