#!/usr/bin/env bash
# The benchmarks behind docs/benchmarks.md, in a release build, on loopback only.
#   bash scripts/bench.sh            # everything (about 15 minutes on 2 cores)
#   QUICK=1 bash scripts/bench.sh    # fewer messages
# Knobs: MESSAGES (relay runs, default 20000), PEER (postfix, or empty to skip the peer).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES="${MESSAGES:-20000}"
[ "${QUICK:-0}" = 1 ] && MESSAGES=4000
PEER="${PEER-postfix}"
OUT="${OUT:-target/bench}"
mkdir -p "$OUT"

cargo build --release -p volley-engine -p volley-bench
BIN=target/release

if [ -n "$PEER" ] && ! command -v postfix >/dev/null; then
  echo "postfix missing: installing it (Debian) for the side-by-side runs"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi
peer_args=()
[ -n "$PEER" ] && peer_args=(--peer "$PEER")

echo "== machine"; nproc; grep -m1 'model name' /proc/cpuinfo; uname -r

echo "== accept rate of one core (Volley on 1 executor, spool durable; blast and sink on the other CPU)"
for size in 1024 102400; do
  n=$MESSAGES; [ "$size" -gt 10000 ] && n=$((MESSAGES / 4))
  dir="$OUT/accept-$size"; rm -rf "$dir"; mkdir -p "$dir"
  cat > "$dir/volley.toml" <<TOML
[server]
hostname = "bench.volley.test"
cores = 1
spool_dir = "$dir/spool"
[[listener]]
address = "127.0.0.1:4625"
relay_networks = ["127.0.0.0/8"]
[[domain]]
match = "*"
max_connections = 50
max_messages_per_connection = 10000
[routes]
"d0.test" = "127.0.0.1:4626"
[api]
address = "127.0.0.1:4680"
TOML
  $BIN/volley-bench sink --listen 127.0.0.1:4626 --cpus 1 --stats-interval-s 0 >/dev/null 2>&1 & sink=$!
  $BIN/volley serve --config "$dir/volley.toml" 2>"$dir/volley.log" & v=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:4680/v1/health >/dev/null && break; sleep 0.1; done
  blast() { $BIN/volley-bench blast --to 127.0.0.1:4625 --size "$size" --connections 50 --cpus 1 --progress-interval-s 0 --json "$@"; }
  full=$(blast --messages "$n")
  echo "-- $size bytes, full load (50 connections): $(echo "$full" | python3 scripts/blast-summary.py)"
  half=$(echo "$full" | python3 scripts/blast-summary.py --half)
  echo "-- $size bytes, half load (--rate $half): $(blast --messages $((n / 2)) --rate "$half" | python3 scripts/blast-summary.py)"
  kill $v $sink; wait $v $sink 2>/dev/null || true
done

echo "== accept latency at 25 % and 50 % of full load (evenly paced), beside the disk's fdatasync latency"
python3 scripts/bench-accept-latency.py --rounds 1

echo "== relay end to end, side by side"
for size in 1024 102400; do
  for rcpt in 1 10; do
    n=$MESSAGES; [ "$size" -gt 10000 ] && n=$((MESSAGES / 4))
    [ "$rcpt" -gt 1 ] && n=$((n / 4))
    $BIN/volley-bench relay --messages "$n" --size "$size" --recipients "$rcpt" "${peer_args[@]}" --out "$OUT/relay-$size-$rcpt"
  done
done

echo "== cross-core handoff"
$BIN/volley-router-bench --messages 400000

if [ -x $BIN/volley-spool-bench ]; then
  echo "== spool"
  $BIN/volley-spool-bench --help >/dev/null && $BIN/volley-spool-bench
fi

echo "== memory per queued recipient (1 M; see docs/memory.md for 10 M)"
$BIN/volley-memory-bench --recipients 1000000

echo "== a million distinct destination domains: queues freed, snapshot cost per second"
$BIN/volley-domains-bench

echo "== shaping that does not bind, A/B end to end"
ROUNDS="${SHAPING_ROUNDS:-5}" MESSAGES="$MESSAGES" OUT="$OUT" bash scripts/bench-shaping-ab.sh

echo "== healthy domains while one domain's receivers stall (tarpit, stop reading), A/B"
bash scripts/bench-stalled-receivers.sh

echo "== bodies in flight: 200 concurrent 50 MiB bodies under the default budget"
python3 scripts/bench-body-budget.py --volley "$BIN/volley"
