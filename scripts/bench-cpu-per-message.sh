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
. scripts/volley-relay-started.sh
relay_arguments 40000 "$@"
# Start-up is not per-message work: counted from the moment the API listens (before blast starts).
start_volley_relay /dev/null
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
