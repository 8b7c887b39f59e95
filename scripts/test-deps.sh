#!/usr/bin/env bash
# Installs what the Python integration tests (tests/) need on a fresh Debian: swaks, openssl,
# redis-server, haproxy, rspamd, promtool (package prometheus), systemd (systemd-analyze), logrotate,
# pip and
# the PyPI packages in tests/requirements.txt. Idempotent: apt-get runs only for a missing package,
# and `apt-get update` only once, and only when something is missing.
#
#   scripts/test-deps.sh            # uses `python3` from PATH
#   PYTHON=/usr/bin/python3 scripts/test-deps.sh
set -euo pipefail

PYTHON="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$here/tests/requirements.txt"

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

# Debian package for each command the tests run.
missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The cluster tests start their own Redis and HAProxy on loopback ports (never the system services).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
# The spam filter tests start their own rspamd on a loopback port (never the system service).
command -v rspamd >/dev/null 2>&1 || missing+=(rspamd)
# tests/test_metrics.py runs `promtool check metrics|rules` (the prometheus package ships promtool;
# its service is not started by the tests).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# The package tests (tests/test_package.py): `systemd-analyze verify` on the unit (the systemd
# package; installing it in a container only adds the tools, nothing starts) and the real logrotate
# on the shipped logrotate file.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v logrotate >/dev/null 2>&1 || missing+=(logrotate)
# swaks only recommends Net::SSLeay, which its --tls needs.
perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || missing+=(libnet-ssleay-perl)
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "test-deps: installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "test-deps: swaks, openssl, redis-server, haproxy, rspamd, promtool, systemd-analyze, logrotate, Net::SSLeay and pip already present"
fi

# PyPI packages: skip pip entirely when every requirement already imports.
if "$PYTHON" - <<'PY' >/dev/null 2>&1
import dnslib, pytest, pytest_timeout, dkim, nacl  # noqa: F401
PY
then
    echo "test-deps: Python packages already present"
else
    echo "test-deps: pip install -r $requirements"
    # Debian's system Python refuses pip outside a venv (PEP 668); retry with the explicit override.
    if ! "$PYTHON" -m pip install -q -r "$requirements"; then
        "$PYTHON" -m pip install -q --break-system-packages -r "$requirements"
    fi
fi
