#!/usr/bin/env bash
# Issue 11's target: with `max_connections` receivers of one domain stalling, healthy domains on the
# same VMTA and core keep >= 90 % of their throughput. Runs the real `volley serve` (one core, one
# implicit VMTA, `[routes]` to `volley-bench sink`s on 127.0.77.x) alternately:
#   A: HEALTHY domains (h0..h{N-1}.stallbench.test) routed to one fast sink; `blast` sends them
#      B's healthy messages in turn (MESSAGES * HEALTHY / (HEALTHY + 1)).
#   B-<fault>: the same, plus a domain `stalled.stallbench.test` routed to a sink in that fault
#      mode (tarpit: never greets; stop-reading-in-data: stops reading once a body starts). Before
#      the measured blast, PRELOAD messages to the stalled domain are sent and the run waits until
#      its queue holds all `STALL_MAX_CONNECTIONS` connections, so every measured second runs with
#      the domain's whole connection cap stalled. The measured blast sends MESSAGES, one domain in
#      HEALTHY+1 of them (10 % with HEALTHY=9) to the stalled one: the same healthy messages as A.
# FAULTS may also name `suspended`, a control: the same share and preload to the extra domain,
# whose queue is suspended (mail accepted and held, no connection): B-tarpit minus B-suspended is
# what the stalled connections themselves cost, apart from accepting the extra share.
# BASELINE=victim-healthy makes A send the same blast as B with the extra domain routed to the fast
# sink (same intake in A and B; only the receiver's health differs).
# STALL_TIMEOUT_MS=N sets the stalled domain's greeting, reply, data and write deadlines to N ms:
# its connections then time out and are replaced during the run (each timeout defers what that
# connection took) instead of being held for the RFC 5321 minutes.
# MEASURES: end-to-end times from the start of the measured blast (intake and delivery share the
# core); drain suspends the healthy queues during the blast and times from their resume (delivery
# only). The figure: healthy messages / (last healthy delivery in the sink's log - start), and
# Volley's CPU (/proc/PID/stat) over the same span per healthy message, steadier than wall time on
# a shared machine. Each round runs A and every B once per measure, the order rotating per round;
# the script prints every run, the medians and the B/A ratios (of the medians and per round).
# fsync is off: the spool's group commit is not what is measured.
#   bash scripts/bench-stalled-receivers.sh   # ROUNDS=3 MESSAGES=30000 HEALTHY=9
# Uses target/release when `volley` and `volley-bench` are built there, else target/debug (PROFILE=
# release|debug chooses; NO_BUILD=1 skips `cargo build`), and says which. Output in $OUT
# (target/bench/stalled: per run the config, logs and sink logs; results.json). Volley and the
# sinks run on CPU 0, blast on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
MESSAGES="${MESSAGES:-30000}"
HEALTHY="${HEALTHY:-9}"
FAULTS="${FAULTS:-tarpit stop-reading-in-data}"
STALL_MAX_CONNECTIONS="${STALL_MAX_CONNECTIONS:-20}"
HEALTHY_MAX_CONNECTIONS="${HEALTHY_MAX_CONNECTIONS:-20}"
CONNECTIONS="${CONNECTIONS:-10}"
PRELOAD="${PRELOAD:-400}"
BASELINE="${BASELINE:-absent}"
NET="${NET:-127.0.77}"
MEASURES="${MEASURES:-end-to-end drain}"
OUT="${OUT:-target/bench}/stalled"
if [ -z "${PROFILE:-}" ]; then
  if [ -x target/release/volley ] && [ -x target/release/volley-bench ]; then PROFILE=release; else PROFILE=debug; fi
fi
if [ "${NO_BUILD:-0}" != 1 ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -p volley-engine -p volley-bench
  else cargo build -p volley-engine -p volley-bench; fi
fi
mkdir -p "$OUT"
echo "build: $PROFILE (target/$PROFILE); rounds $ROUNDS, $MESSAGES messages, $HEALTHY healthy domains,"\
  "faults: $FAULTS, stalled max_connections $STALL_MAX_CONNECTIONS, baseline $BASELINE"

exec python3 - "target/$PROFILE" "$OUT" "$ROUNDS" "$MESSAGES" "$HEALTHY" "$FAULTS" \
  "$STALL_MAX_CONNECTIONS" "$HEALTHY_MAX_CONNECTIONS" "$CONNECTIONS" "$PRELOAD" "$BASELINE" "$NET" "$MEASURES" \
  "${STALL_TIMEOUT_MS:-}" <<'PY'
import json, os, shutil, signal, socket, statistics, subprocess, sys, time, urllib.request
from datetime import datetime
from pathlib import Path

(bin_dir, out, rounds, messages, healthy, faults, stall_conns, healthy_conns, connections, preload,
 BASELINE, net, measures, stall_timeout_ms) = sys.argv[1:]
MEASURES = measures.split()
BIN, OUT = Path(bin_dir), Path(out)
ROUNDS, MESSAGES, HEALTHY = int(rounds), int(messages), int(healthy)
FAULTS = faults.split()
STALL_CONNS, HEALTHY_CONNS, CONNECTIONS, PRELOAD = (int(stall_conns), int(healthy_conns),
                                                    int(connections), int(preload))
FRONT, HEALTHY_SINK, STALLED_SINK = f"{net}.1", f"{net}.2", f"{net}.3"
HEALTHY_DOMAINS = [f"h{i}.stallbench.test" for i in range(HEALTHY)]
STALLED = "stalled.stallbench.test"
# STALL_TIMEOUT_MS: the stalled domain's deadlines, so its connections time out and are replaced
# during the run (churn) instead of being held for the RFC 5321 minutes.
STALL_DEADLINES = "".join(f"{k} = {stall_timeout_ms}\n" for k in (
    "greeting_timeout_ms", "reply_timeout_ms", "data_timeout_ms", "write_timeout_ms")
) if stall_timeout_ms else ""
START_TIMEOUT_S = 30.0
DELIVERY_TIMEOUT_S = 600.0
# The stalled queue opens connections up to its cap (2 s per extra one at worst); with short
# deadlines they churn, and the cap may never be seen at once.
STALL_WAIT_S = 5.0 if stall_timeout_ms else 90.0
HTTP_TIMEOUT_S = 5.0


def free_port(address):
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def wait_for_port(address, port, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {address}:{port} after {timeout_s} s")


def start(args, log_path):
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))


def stop(process):
    if process.poll() is None:
        process.kill()  # the spool is thrown away; SIGTERM would wait 30 s for the stalled connections
    process.wait()


def sink(address, log, fault, work):
    port = free_port(address)
    args = [str(BIN / "volley-bench"), "sink", "--listen", f"{address}:{port}", "--log", str(log),
            "--stats-interval-s", "0", "--cpus", "0"]
    if fault:
        args.append(f"--{fault}")
    process = start(args, work / f"sink-{address}.stderr")
    wait_for_port(address, port, START_TIMEOUT_S)
    return process, port


def times_ms(log, domains):
    """Sink log times (unix ms) of the messages whose first recipient is at one of `domains`."""
    found = []
    if not log.exists():
        return found
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        rcpt = entry["recipients"][0] if entry.get("recipients") else ""
        if rcpt.rsplit("@", 1)[-1] in domains:
            ts = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
            found.append(ts * 1000.0)
    return found


def cpu_s(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queues(api_port):
    with urllib.request.urlopen(f"http://{FRONT}:{api_port}/v1/queues", timeout=HTTP_TIMEOUT_S) as r:
        return json.load(r)["queues"]


def stalled_connections(api_port):
    try:
        return sum(q["connections"] for q in queues(api_port) if q["domain"] == STALLED)
    except (OSError, ValueError, KeyError):
        return -1


def post(api_port, path, body):
    request = urllib.request.Request(f"http://{FRONT}:{api_port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as r:
        if r.status != 202:
            raise SystemExit(f"POST {path}: {r.status}")


def queued(api_port, domains):
    try:
        return sum(q["size"] for q in queues(api_port) if q["domain"] in domains)
    except (OSError, ValueError, KeyError):
        return -1


def blast(front_port, names, count, work, name):
    args = [str(BIN / "volley-bench"), "blast", "--to", f"{FRONT}:{front_port}",
            "--messages", str(count), "--domain-names", ",".join(names),
            "--connections", str(CONNECTIONS), "--cpus", "1", "--json", "--progress-interval-s", "0"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(work / f"{name}.stderr", "wb"))


def one_run(kind, measure, round_no):
    """kind: "A" or a fault name; measure: "end-to-end" or "drain". Returns the run's figures."""
    work = OUT / f"{measure}-{kind}-{round_no}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fault = None if kind == "A" else kind
    processes = []
    try:
        healthy_log = work / "healthy-sink.jsonl"
        p, healthy_port = sink(HEALTHY_SINK, healthy_log, None, work)
        processes.append(p)
        routes = {d: f"{HEALTHY_SINK}:{healthy_port}" for d in HEALTHY_DOMAINS}
        with_victim = fault is not None or BASELINE == "victim-healthy"
        held_back = fault == "suspended"  # the control: the share is accepted and held, no connection
        if held_back:
            routes[STALLED] = f"{HEALTHY_SINK}:{healthy_port}"
        elif fault:
            p, stalled_port = sink(STALLED_SINK, work / "stalled-sink.jsonl", fault, work)
            processes.append(p)
            routes[STALLED] = f"{STALLED_SINK}:{stalled_port}"
        elif with_victim:
            routes[STALLED] = f"{HEALTHY_SINK}:{healthy_port}"
        front_port, api_port = free_port(FRONT), free_port(FRONT)
        config = f"""[server]
hostname = "stallbench.volley.test"
cores = 1
spool_dir = "{work / 'spool'}"
[spool]
fsync = false
[[listener]]
address = "{FRONT}:{front_port}"
relay_networks = ["127.0.0.0/8"]
[[domain]]
match = "*"
max_connections = {HEALTHY_CONNS}
max_messages_per_connection = 1000
[[domain]]
match = "{STALLED}"
max_connections = {STALL_CONNS}
{STALL_DEADLINES}[api]
address = "{FRONT}:{api_port}"
[routes]
""" + "".join(f'"{d}" = "{hop}"\n' for d, hop in routes.items())
        (work / "volley.toml").write_text(config)
        volley = start([str(BIN / "volley"), "serve", "--config", str(work / "volley.toml")],
                       work / "volley.stderr")
        processes.append(volley)
        wait_for_port(FRONT, front_port, START_TIMEOUT_S)
        wait_for_port(FRONT, api_port, START_TIMEOUT_S)
        held = 0
        if held_back:
            post(api_port, "/v1/queues/suspend", {"domain": STALLED, "reason": "stallbench control"})
            blast(front_port, [STALLED], PRELOAD, work, "preload").communicate()
        elif fault:
            pre = blast(front_port, [STALLED], PRELOAD, work, "preload")
            pre.communicate()
            deadline = time.monotonic() + STALL_WAIT_S
            while time.monotonic() < deadline:
                held = stalled_connections(api_port)
                if held >= STALL_CONNS:
                    break
                time.sleep(0.5)
        names = HEALTHY_DOMAINS + ([STALLED] if with_victim else [])
        # B's blast sends MESSAGES, one domain in len(names) of them to the stalled domain; A without
        # the victim sends B's healthy share, so both runs deliver the same healthy messages.
        with_stalled = HEALTHY_DOMAINS + [STALLED]
        expected = sum(1 for i in range(MESSAGES) if with_stalled[i % len(with_stalled)] != STALLED)
        total = MESSAGES if with_victim else expected
        healthy_set = set(HEALTHY_DOMAINS)
        if measure == "drain":
            # Hold the healthy queues while the blast is accepted, then time only their delivery.
            for d in HEALTHY_DOMAINS:
                post(api_port, "/v1/queues/suspend", {"domain": d, "reason": "stallbench"})
        t0_ms = time.time() * 1000.0
        cpu0 = cpu_s(volley.pid)
        measured = blast(front_port, names, total, work, "blast")
        stdout, _ = measured.communicate()
        report = json.loads(stdout) if stdout.strip() else {}
        if report.get("messages_accepted") != total:
            raise SystemExit(f"{kind} round {round_no}: blast had {report.get('messages_accepted')}"
                             f" of {total} messages accepted ({work}/blast.stderr)")
        if measure == "drain":
            deadline = time.monotonic() + START_TIMEOUT_S
            while queued(api_port, healthy_set) < expected:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{kind} round {round_no}: the healthy queues hold"
                                     f" {queued(api_port, healthy_set)} of {expected}")
                time.sleep(0.2)
            if times_ms(healthy_log, healthy_set):
                raise SystemExit(f"{kind} round {round_no}: a suspended queue delivered")
            t0_ms = time.time() * 1000.0
            cpu0 = cpu_s(volley.pid)
            for d in HEALTHY_DOMAINS:
                post(api_port, "/v1/queues/resume", {"domain": d})
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        delivered = []
        while time.monotonic() < deadline:
            delivered = times_ms(healthy_log, healthy_set)
            if len(delivered) >= expected:
                break
            time.sleep(0.2)
        if len(delivered) < expected:
            raise SystemExit(f"{kind} round {round_no}: {len(delivered)} of {expected} healthy"
                             f" messages delivered after {DELIVERY_TIMEOUT_S} s ({work})")
        cpu = cpu_s(volley.pid) - cpu0
        end_held = stalled_connections(api_port) if fault else 0
        if held_back and times_ms(healthy_log, {STALLED}):
            raise SystemExit(f"{kind} round {round_no}: the suspended domain delivered")
        elapsed_s = (max(delivered) - t0_ms) / 1000.0
        return {
            "kind": kind, "measure": measure, "round": round_no, "healthy_messages": expected,
            "healthy_msg_per_s": expected / elapsed_s, "elapsed_s": elapsed_s,
            # Volley's CPU from the start of the timing to the last delivery seen (polled every
            # 0.2 s): per healthy message, and as a share of one core (below 1: it waited or was
            # crowded out by other processes).
            "cpu_us_per_healthy": 1e6 * cpu / expected, "cpu_share": cpu / elapsed_s,
            "first_delivery_s": (min(delivered) - t0_ms) / 1000.0,
            "intake_msg_per_s": report["accepted_per_s"],
            "stalled_connections_before": held, "stalled_connections_after": end_held,
        }
    finally:
        for p in reversed(processes):
            stop(p)
        # Each run's spool preallocates 64 MiB segments: free the disk before the next run.
        shutil.rmtree(work / "spool", ignore_errors=True)


kinds = ["A"] + FAULTS
results = []
for round_no in range(1, ROUNDS + 1):
    shift = (round_no - 1) % len(kinds)  # rotate the order: a second run in a row may find the machine warmer
    for measure in MEASURES:
        for kind in kinds[shift:] + kinds[:shift]:
            r = one_run(kind, measure, round_no)
            results.append(r)
            extra = (f", stalled connections {r['stalled_connections_before']} before /"
                     f" {r['stalled_connections_after']} after" if kind != "A" else "")
            print(f"round {round_no} {measure:>10} {kind:>20}: healthy {r['healthy_msg_per_s']:7.0f} msg/s"
                  f" ({r['healthy_messages']} in {r['elapsed_s']:.2f} s), intake"
                  f" {r['intake_msg_per_s']:7.0f} msg/s, volley CPU {r['cpu_us_per_healthy']:5.0f} µs"
                  f" per healthy message ({100 * r['cpu_share']:.0f} % of a core){extra}", flush=True)
(OUT / "results.json").write_text(json.dumps(results, indent=1))
for measure in MEASURES:
    runs = [r for r in results if r["measure"] == measure]
    a = statistics.median(r["healthy_msg_per_s"] for r in runs if r["kind"] == "A")
    baseline = ("the extra domain's share to the fast sink" if BASELINE == "victim-healthy"
                else "healthy domains only")
    print(f"{measure}: median A ({baseline}): {a:.0f} msg/s")
    cpu_a = statistics.median(r["cpu_us_per_healthy"] for r in runs if r["kind"] == "A")
    print(f"{measure}: median A volley CPU {cpu_a:.0f} µs per healthy message")
    for fault in FAULTS:
        cpu_b = statistics.median(r["cpu_us_per_healthy"] for r in runs if r["kind"] == fault)
        print(f"{measure}: median B ({fault}) volley CPU {cpu_b:.0f} µs per healthy message:"
              f" {100 * (cpu_b - cpu_a) / cpu_a:+.1f} % (a core bound by CPU keeps"
              f" {100 * cpu_a / cpu_b:.1f} % of its throughput)")
        b = [r["healthy_msg_per_s"] for r in runs if r["kind"] == fault]
        per_round = [r["healthy_msg_per_s"] / ra["healthy_msg_per_s"] for r in runs if r["kind"] == fault
                     for ra in runs if ra["kind"] == "A" and ra["round"] == r["round"]]
        held = "held, no connection" if fault == "suspended" else f"{STALL_CONNS} stalled connections"
        print(f"{measure}: median B ({fault}, {held}):"
              f" {statistics.median(b):.0f} msg/s; B/A {100 * statistics.median(b) / a:.1f} %"
              f" (per round {', '.join(f'{100 * x:.1f}' for x in per_round)} %;"
              f" their median {100 * statistics.median(per_round):.1f} %)")
PY
