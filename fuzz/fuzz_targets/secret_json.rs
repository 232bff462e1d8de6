//! Fuzzes `fwatchdog::fuzzing::secret_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::secret_json(data));
