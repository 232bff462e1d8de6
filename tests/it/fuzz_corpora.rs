//! Replays the committed fuzz corpora (`fuzz/corpus/TARGET/*`, grown by `bash fuzz/run.sh`)
//! through the same entry points the fuzz targets use, so every input that ever mattered to a
//! fuzzer is checked by `cargo test` on stable Rust.

use std::path::Path;

use fwatchdog::fuzzing::TARGETS;

#[test]
fn every_fuzz_corpus_replays_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no fuzz target for {name}"
        );
        let dir = root.join("corpus").join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: empty corpus");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", input.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}
