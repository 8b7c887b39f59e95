#!/usr/bin/env bash
# Power-loss test with defaults: the spool on an ext4 image on a loop device; at random moments
# under load, freeze volley and keep only what reached the device (a copy of the image, without
# the page cache), recover on the copy, check no acknowledged message is lost. Needs root and the
# debug binaries (`cargo build -p volley-engine -p volley-bench --bins`); extra arguments go to
# tests/crash/power_loss_test.py (try --help; --no-fsync is the control that must fail).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec python3 "$root/tests/crash/power_loss_test.py" "$@"
