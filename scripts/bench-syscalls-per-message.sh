#!/usr/bin/env bash
# System calls of the volley process per relayed message: one Volley-only relay run
# (volley-bench relay --no-ceiling) traced with `perf trace -s` from the moment its API listens.
# perf's tracing slows Volley down, so read the counts, not the rate. Needs root (or
# perf_event_paranoid <= 1) and perf.
#   bash scripts/bench-syscalls-per-message.sh target/release/volley 20000 --transactions-in-flight 4
#   bash scripts/bench-syscalls-per-message.sh target/release/volley 20000 --transactions-in-flight 4 --rcpt-domains 1000
# Extra arguments go to `volley-bench relay`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/volley-relay-started.sh
relay_arguments 20000 "$@"
start_volley_relay "$work/relay.log"
perf trace -s -p "$pid" -o "$work/trace.txt" &
trace=$!
wait "$relay"
kill -INT "$trace" 2>/dev/null || true
wait "$trace" 2>/dev/null || true
python3 - "$work/trace.txt" "$messages" <<'PY'
import collections, re, sys
path, n = sys.argv[1], int(sys.argv[2])
calls = collections.Counter()
for line in open(path):
    m = re.match(r"\s+(\w+)\s+(\d+)\s+\d+\s+[\d.]+", line)
    if m:
        calls[m.group(1)] += int(m.group(2))
print("  ".join(f"{name} {count / n:.2f}" for name, count in calls.most_common(12)), "(per message)")
PY
