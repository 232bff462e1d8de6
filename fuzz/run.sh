#!/usr/bin/env bash
# Runs every fuzz target for a while, growing its corpus in fuzz/corpus/TARGET, then shrinks
# each corpus to the inputs that add coverage (what is committed).
#
#   bash fuzz/run.sh            # 60 s per target
#   bash fuzz/run.sh 300        # 5 minutes per target
#   bash fuzz/run.sh 60 framing # one target
#
# Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz`); crashes land in
# fuzz/artifacts/TARGET/ and `cargo test` replays the committed corpora on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^fwatchdog-fuzz$')
fi
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s" >&2
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    2>&1 | grep -E '^(#[0-9]+ +DONE|Done|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)' || true
  if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
    echo "== $target: FOUND crashes in fuzz/artifacts/$target" >&2
  fi
  # Keep only inputs that add coverage.
  minimized="$(mktemp -d)"
  cargo +nightly fuzz run "$target" "$minimized" "fuzz/corpus/$target" -- -merge=1 >/dev/null 2>&1
  rm -rf "fuzz/corpus/$target"
  mv "$minimized" "fuzz/corpus/$target"
  echo "== $target: corpus $(ls "fuzz/corpus/$target" | wc -l) inputs" >&2
done
