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
volley="$(realpath "${1:?the volley binary}")"
messages="${2:-20000}"
shift $(($# < 2 ? $# : 2))
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
out="$work/relay"
target/release/volley-bench relay --no-ceiling --messages "$messages" --volley "$volley" \
  --out "$out" "$@" >"$work/relay.log" 2>&1 &
relay=$!
pid=""
for _ in $(seq 200); do
  pid=$(pgrep -f "^$volley serve --config $out" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.05
done
[ -n "$pid" ] || { echo "volley did not start" >&2; exit 2; }
for _ in $(seq 200); do
  grep -qs "volley::api: API on" "$out/volley/volley.log" && break
  sleep 0.05
done
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
