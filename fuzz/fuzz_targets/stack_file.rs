//! Fuzzes `fwatchdog::fuzzing::stack_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::stack_file(data));
