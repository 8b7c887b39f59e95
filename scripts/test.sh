#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, builds, runs the Rust tests,
# the fuzz targets' stable smoke tests, the integration suite against the real daemon, and a short
# crash test. Safe to run again; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
if [ -x scripts/test-deps.sh ] || [ -f scripts/test-deps.sh ]; then
  bash scripts/test-deps.sh
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "build"
cargo build --workspace --all-targets

step "Rust tests"
cargo test --workspace

if [ -d tests ] && ls tests/test_*.py >/dev/null 2>&1; then
  step "integration tests (real daemon, sinks, DNS server on loopback)"
  timeout 1200 python3 -m pytest -q tests/ -p no:cacheprovider
fi

if [ -f tests/crash/crash_test.py ]; then
  step "crash test (kill -9 under load, restart, no acknowledged message lost)"
  timeout 600 python3 tests/crash/crash_test.py --rounds "${CRASH_ROUNDS:-5}"
fi
