//! Baseline for the watchdog benchmark: how fast this machine can fork+exec+wait a handler with
//! piped stdin/stdout, writing a small body and reading the output, from one worker per core.
//!
//! Usage: `cargo bench --bench spawn_rate -- [SECONDS] [COMMAND...]` (default: 5 s of `cat`).
//! Prints `spawn_rate_per_sec=N` for scripts to pick up.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BODY: &[u8] = b"hello fwatchdog";

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let command: Vec<String> = args.collect();
    let command = if command.is_empty() {
        vec!["cat".to_string()]
    } else {
        command
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (stop, done, failures, command) = (
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&failures),
                command.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if run_once(&command) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "spawn+wait of {:?} with pipes, {workers} workers, {elapsed:.1}s: {n} runs, {} failures",
        command.join(" "),
        failures.load(Ordering::Relaxed)
    );
    println!("spawn_rate_per_sec={:.0}", n as f64 / elapsed);
}

fn run_once(command: &[String]) -> bool {
    let Some((program, args)) = command.split_first() else {
        return false;
    };
    let Ok(mut child) = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(BODY);
    }
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_end(&mut out);
    }
    child.wait().is_ok_and(|s| s.success()) && out == BODY
}
