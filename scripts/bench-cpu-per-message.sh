#!/usr/bin/env bash
# One Volley-only relay run (volley-bench relay --no-ceiling, 1 KiB, 1 recipient) that prints the
# end-to-end rate and the CPU time the volley process used per message (utime + stime from
# /proc/PID/stat, sampled until the run ends; user and system time also apart). Its start-up (up to
# its API listening, about 0.2 s of CPU: executors, io_uring rings and buffers, spool) is not
# counted; the memory it touches first under load is. For A/B runs of two builds or two configurations,
# run it alternately:
#   bash scripts/bench-cpu-per-message.sh /tmp/volley-old 40000
#   bash scripts/bench-cpu-per-message.sh target/release/volley 40000
#   bash scripts/bench-cpu-per-message.sh target/release/volley 30000 --volley-config-extra FILE
# Extra arguments go to `volley-bench relay`.
set -euo pipefail
cd "$(dirname "$0")/.."
volley="$(realpath "${1:?the volley binary}")"
messages="${2:-40000}"
shift $(($# < 2 ? $# : 2))
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
out="$work/relay"
target/release/volley-bench relay --no-ceiling --messages "$messages" --volley "$volley" \
  --out "$out" "$@" >/dev/null 2>&1 &
relay=$!
pid=""
for _ in $(seq 200); do
  pid=$(pgrep -f "^$volley serve --config $out" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.05
done
[ -n "$pid" ] || { echo "volley did not start" >&2; exit 2; }
# Start-up is not per-message work: count from the moment the API listens (before blast starts).
for _ in $(seq 200); do
  grep -qs "volley::api: API on" "$out/volley/volley.log" && break
  sleep 0.05
done
read -r user0 system0 <<<"$(awk '{print $14, $15}' "/proc/$pid/stat")"
user=$user0
system=$system0
while kill -0 "$relay" 2>/dev/null; do
  t=$(awk '{print $14, $15}' "/proc/$pid/stat" 2>/dev/null || true)
  [ -n "$t" ] && read -r user system <<<"$t"
  sleep 0.1
done
wait "$relay"
python3 - "$out/relay.json" "$((user - user0))" "$((system - system0))" "$(getconf CLK_TCK)" "$messages" "$volley" \
  "$((user0 + system0))" <<'PY'
import json, sys
path, volley = sys.argv[1], sys.argv[6]
user, system, hz, n, start = (int(a) for a in sys.argv[2:6] + sys.argv[7:8])
r = json.load(open(path))["results"][-1]
us = lambda ticks: ticks / hz * 1e6 / n
print(f"{volley}: {r['msg_per_s']:.0f} msg/s end to end, volley CPU {us(user + system):.0f} us per message "
      f"(user {us(user):.0f}, system {us(system):.0f}; start-up {start / hz * 1e3:.0f} ms not counted)")
PY
