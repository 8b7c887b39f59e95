#!/usr/bin/env bash
# Crash test with defaults: SIGKILL volley at random moments under load, restart, check no
# acknowledged message is lost. Needs the debug binaries (`cargo build -p volley-engine -p
# volley-bench --bins`); extra arguments go to tests/crash/crash_test.py (try --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec python3 "$root/tests/crash/crash_test.py" "$@"
