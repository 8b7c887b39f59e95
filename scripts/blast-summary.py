"""Reads `volley-bench blast --json` on stdin and prints one line: rate, replies and accept latency.
With --half, prints only half the accepted rate (for a run at half load)."""
import json
import sys

report = json.load(sys.stdin)
if "--half" in sys.argv:
    print(max(1, int(report["accepted_per_s"] / 2)))
else:
    latency = report["latency_us"]["end_of_data_reply"]
    print(
        f"{report['accepted_per_s']:.0f} accepted/s of {report['messages_requested']}, "
        f"replies {report['replies_by_code']}, accept latency "
        f"p50 {latency['p50'] / 1000:.2f} ms p99 {latency['p99'] / 1000:.2f} ms"
    )
