#!/usr/bin/env bash
# The chaos soak (tests/soak/soak.py): the real daemon against healthy and hostile receivers
# (volley-bench sink fault modes on 127.0.88.N:25, SERVFAIL and silent DNS), many distinct domains,
# reloads, a kill -9 and restart, the spool nearly full; then the invariants. Needs root (the sinks
# listen on port 25, where delivery goes) and the Python test dependencies (scripts/test-deps.sh).
#
#   scripts/soak.sh --short     # about 4.5 minutes (the default)
#   scripts/soak.sh --long      # about an hour and a half (two burst rounds)
#   scripts/soak.sh --short --cores 2 --seed 7 --out /tmp/soak
#
# Uses target/release when both binaries are there, else target/debug (built if missing).
# Exit status: 0 all invariants held, 1 a violation (printed), 2 the harness failed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ -x target/release/volley ] && [ -x target/release/volley-bench ]; then
  bin_dir=target/release
else
  bin_dir=target/debug
  if [ ! -x "$bin_dir/volley" ] || [ ! -x "$bin_dir/volley-bench" ]; then
    cargo build -p volley-engine -p volley-bench --bins
  fi
fi
exec python3 tests/soak/soak.py --bin-dir "$root/$bin_dir" "$@"
