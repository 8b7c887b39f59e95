"""A private rspamd on a loopback port for the spam filter tests, started and stopped by the tests
(never the system service; scripts/test-deps.sh installs the Debian package). Its configuration is
minimal: no remote maps, no fuzzy servers, DNS to a closed loopback port, so nothing leaves
loopback. GTUBE is rspamd's own; two test rules give the other actions: a Subject with `flag-me`
scores 7 ("add header"), one with `soft-me` gets "soft reject"."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 60.0

RULES = """
rspamd_config:register_symbol({
  name = 'VOLLEY_TEST_FLAG',
  score = 7.0,
  callback = function(task)
    local subject = task:get_subject()
    return subject ~= nil and subject:find('flag%-me') ~= nil
  end
})
rspamd_config:register_symbol({
  name = 'VOLLEY_TEST_SOFT',
  score = 0.0,
  callback = function(task)
    local subject = task:get_subject()
    if subject ~= nil and subject:find('soft%-me') ~= nil then
      task:set_pre_result('soft reject', 'try again later')
      return true
    end
    return false
  end
})
"""


class Rspamd:
    def __init__(self, dir: Path, port: int) -> None:
        self.dir = dir
        self.port = port
        self.process: subprocess.Popen | None = None
        binary = shutil.which("rspamd")
        assert binary, "rspamd is missing: run scripts/test-deps.sh"
        self.binary = binary

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Rspamd":
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        (self.dir / "rules.lua").write_text(RULES)
        (self.dir / "rspamd.conf").write_text(f"""
options {{
  pidfile = "{self.dir}/run/rspamd.pid";
  dbdir = "{self.dir}/run";
  dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }}
}}
logging {{ type = "console"; level = "error"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{self.port}"; count = 1; }}
actions {{ reject = 15; add_header = 6; }}
lua = "{self.dir}/rules.lua";
""")
        self._log = open(self.dir / "rspamd.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, "-f", "-i", "-u", "root", "-g", "root", "-c", str(self.dir / "rspamd.conf")],
            stdout=self._log, stderr=self._log,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.read().strip() == b"pong":
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"rspamd did not start: {(self.dir / 'rspamd.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._log.close()
            self.process = None
