//! `fwatchdog`: read the configuration, set up logging, bind, run.

use std::process::ExitCode;

fn main() -> ExitCode {
    fwatchdog::watchdog::command::main(std::env::args().skip(1))
}
