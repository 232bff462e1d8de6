#!/usr/bin/env bash
# Asynchronous pipeline benchmark: (a) sync calls through fgateway, (b) durable enqueues/s at 64
# connections, (c) end-to-end rate for 10,000 calls (enqueue to callback), and (c)/(a).
#
#   bash benches/async.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is required (apt-get install python3)" >&2; exit 1; }
cargo build --release --quiet --bin fwatchdog --bin fgateway
cargo bench --quiet --bench async_pipeline
