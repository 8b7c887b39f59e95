#!/usr/bin/env bash
# The cost of traffic shaping when no limit binds, end to end (issue 5's goal: at most 5 % of
# throughput). Runs `volley-bench relay` alternately with
#   A: the relay's plain configuration (one `match = "*"` policy: connection caps only), and
#   B: the same plus every provider profile of tuning/profiles (their rollups, domain policies and
#      backoff rules), a `d0.test` policy with a per-minute and per-hour rate, backoff settings
#      and retry intervals, and hourly and daily sending limits on the customer, all far above
#      what this machine can send, so nothing binds.
# Both send as customer `bench` (an X-Volley-Customer header), so only the limits differ. Runs
# ROUNDS times each (A B, B A, A B ...) so that drift on the shared machine hits both, and prints the
# median of each and the difference.
#   bash scripts/bench-shaping-ab.sh           # ROUNDS=3, MESSAGES=20000, 1 KiB, 1 recipient
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
MESSAGES="${MESSAGES:-20000}"
OUT="${OUT:-target/bench}/shaping-ab"
mkdir -p "$OUT"

cargo build --release -p volley-engine -p volley-bench
BIN=target/release

extra="$OUT/shaping-b.toml"
cat tuning/profiles/*.toml > "$extra"
cat >> "$extra" <<'TOML'

[[domain]]
match = "d0.test"
max_connections = 50
max_messages_per_connection = 1000
max_messages_per_minute = 6000000
max_messages_per_hour = 360000000
retry_intervals = ["1m", "5m", "15m", "1h"]
max_queue_age = "2d"
backoff_max_connections = 5
backoff_max_messages_per_minute = 600
backoff_retry_after = "5m"
backoff_recovery_deliveries = 100
backoff_quiet_period = "10m"

[[customer]]
name = "bench"
max_messages_per_hour = 1000000000
max_messages_per_day = 10000000000

[[backoff]]
match = "d0.test"
pattern = "4.7.0"
action = "backoff"

[[backoff]]
match = "d0.test"
pattern = "too many connections"
action = "backoff"

[[backoff]]
match = "d0.test"
pattern = "5.7.1"
action = "suspend"
duration = "10m"
TOML

run() { # $1 = A|B, $2 = round
  local args=(--blast-header "X-Volley-Customer:bench")
  [ "$1" = B ] && args+=(--volley-config-extra "$extra")
  $BIN/volley-bench relay --no-ceiling --messages "$MESSAGES" "${args[@]}" \
    --out "$OUT/$1-$2" >/dev/null
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][-1]; print(round(r["msg_per_s"]))' "$OUT/$1-$2/relay.json"
}

a=(); b=()
for round in $(seq "$ROUNDS"); do
  # Which runs first alternates too: a second run in a row may find the machine warmer.
  if [ $((round % 2)) = 1 ]; then
    a+=("$(run A "$round")"); b+=("$(run B "$round")")
  else
    b+=("$(run B "$round")"); a+=("$(run A "$round")")
  fi
  echo "round $round: A ${a[-1]} msg/s, B ${b[-1]} msg/s"
done
python3 - "${a[*]}" "${b[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"median A (caps only) {ma:.0f} msg/s, B (profiles + rate limits that never bind) {mb:.0f} msg/s: "
      f"shaping costs {100 * (ma - mb) / ma:+.1f} % of throughput")
PY
