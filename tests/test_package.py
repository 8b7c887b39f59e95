"""The Debian package (scripts/package.sh): built from the debug build the suite already has
(`--debug --no-build`: the same files as the release package, packed in seconds), unpacked with
`dpkg -x` into a scratch directory. Its files, modes and owners; the configuration it installs;
the systemd unit (`systemd-analyze verify` and what its keys must agree with); the logrotate file,
run by the real logrotate against a running daemon; the maintainer scripts, run with stubs for
the commands that would change this machine."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import BIN_DIR, ROOT, message, read_json_lines, wait_until

PACKAGE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def deb() -> Path:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "package.sh"), "--debug", "--no-build"],
        capture_output=True,
        timeout=PACKAGE_TIMEOUT_S,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    path = ROOT / result.stdout.decode().strip().splitlines()[-1]
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def unpacked(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=60)
    return root


def cargo_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    return tomllib.loads(text)["workspace"]["package"]["version"]


def multiarch() -> str:
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    return {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[arch]


def unit(unpacked: Path) -> dict[str, list[str]]:
    """The [Service] keys of the unit, each with every value it is given."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in (unpacked / "usr/lib/systemd/system/volley.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        keys.setdefault(f"{section}{key}", []).append(value)
    return keys


def packaged_config(unpacked: Path) -> dict:
    return tomllib.loads((unpacked / "etc/volley/volley.toml").read_text())


# -- files, modes, owners


def test_files_and_modes(deb, unpacked):
    name = deb.name
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert name == f"volley_{cargo_version()}_{arch}.deb"
    expected = {
        "usr/bin/volley": 0o755,
        "usr/bin/volley-bench": 0o755,
        "usr/bin/volley-tune": 0o755,
        f"usr/lib/{multiarch()}/libvolley_ffi.so": 0o644,
        "usr/include/volley.h": 0o644,
        "usr/lib/systemd/system/volley.service": 0o644,
        "etc/logrotate.d/volley": 0o644,
        # The configuration may hold the API token (postinst gives it to group volley).
        "etc/volley/volley.toml": 0o640,
        "usr/share/doc/volley/install.md": 0o644,
        "usr/share/doc/volley/copyright": 0o644,
    }
    for profile in (ROOT / "tuning" / "profiles").glob("*.toml"):
        expected[f"usr/share/volley/profiles/{profile.name}"] = 0o644
    for path, mode in expected.items():
        st = (unpacked / path).lstat()
        assert stat.S_ISREG(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {oct(stat.S_IMODE(st.st_mode))}"
    # The header and the profiles are the tree's own.
    assert (unpacked / "usr/include/volley.h").read_bytes() == (ROOT / "ffi/include/volley.h").read_bytes()
    for profile in (ROOT / "tuning" / "profiles").glob("*.toml"):
        assert (unpacked / "usr/share/volley/profiles" / profile.name).read_bytes() == profile.read_bytes()
    # The packaged binaries run.
    out = subprocess.run([str(unpacked / "usr/bin/volley"), "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["volley", cargo_version()], out
    listed = subprocess.run(
        [str(unpacked / "usr/bin/volley-tune"), "profiles", "--dir", str(unpacked / "usr/share/volley/profiles")],
        capture_output=True, text=True, timeout=30,
    )
    assert len(listed.stdout.splitlines()) == len(list((ROOT / "tuning/profiles").glob("*.toml"))), listed


def test_owners_fields_and_conffiles(deb, tmp_path):
    listing = subprocess.run(["dpkg", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    lines = [l for l in listing.splitlines() if l.strip()]
    assert lines, listing
    # Everything belongs to root in the archive; postinst hands the spool and logs to volley.
    assert all(l.split()[1] == "root/root" for l in lines), listing
    field = lambda f: subprocess.run(  # noqa: E731
        ["dpkg-deb", "-f", str(deb), f], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert field("Package") == "volley"
    assert field("Version") == cargo_version()
    assert "adduser" in field("Depends")
    assert "iproute2" in field("Depends"), "volley-tune reads addresses with `ip -j addr`"
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    assert (control / "conffiles").read_text().split() == ["/etc/volley/volley.toml", "/etc/logrotate.d/volley"]
    for script in ("postinst", "prerm", "postrm"):
        assert stat.S_IMODE((control / script).stat().st_mode) == 0o755, script
    sums = dict(reversed(l.split(None, 1)) for l in (control / "md5sums").read_text().splitlines())
    assert "usr/bin/volley" in sums and "etc/volley/volley.toml" in sums


# -- the configuration


def test_packaged_config_checks_and_points_at_the_package_paths(unpacked, tmp_path):
    conf = unpacked / "etc/volley/volley.toml"
    done = subprocess.run([str(BIN_DIR / "volley"), "check", "--config", str(conf)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    config = packaged_config(unpacked)
    assert config["server"]["spool_dir"] == "/var/spool/volley"
    assert config["server"]["accounting_log"] == "/var/log/volley/accounting.log"
    # The installed profiles work as `include`s by their absolute path, as the header says.
    header = conf.read_text().split("[server]")[0]
    assert "/usr/share/volley/profiles/gmail.toml" in header
    with_profile = tmp_path / "volley.toml"
    gmail = unpacked / "usr/share/volley/profiles/gmail.toml"
    with_profile.write_text(f"include = [{str(gmail)!r}]\n".replace("'", '"') + conf.read_text())
    done = subprocess.run(
        [str(BIN_DIR / "volley"), "check", "--config", str(with_profile)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the unit


def test_unit_passes_systemd_analyze_verify(unpacked, tmp_path):
    # A root with the package, the system's own units (sysinit.target...) and /bin/kill (ExecReload).
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", f"{unpacked}/.", str(root)], check=True)
    for units in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(units).is_dir():
            subprocess.run(["cp", "-an", f"{units}/.", str(root / "usr/lib/systemd/system")], check=True)
    (root / "bin").mkdir(exist_ok=True)
    subprocess.run(["cp", "/bin/kill", str(root / "bin/kill")], check=True)
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "/usr/lib/systemd/system/volley.service"],
        capture_output=True, text=True, timeout=60,
    )
    # verify exits 0 on an unknown key or a bad value, only warning: no output is the pass.
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def test_unit_agrees_with_the_daemon_and_the_package(unpacked):
    keys = unit(unpacked)
    get = lambda k: keys.get(f"[Service]{k}", [])  # noqa: E731
    assert get("Type") == ["notify"]
    assert get("User") == ["volley"] and get("Group") == ["volley"]
    assert get("ExecStart") == ["/usr/bin/volley serve --config /etc/volley/volley.toml --log-format json"]
    assert get("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    caps = " ".join(get("AmbientCapabilities")).split()
    assert "CAP_NET_BIND_SERVICE" in caps and "CAP_IPC_LOCK" in caps
    assert get("NoNewPrivileges") == ["yes"] and get("PrivateTmp") == ["yes"]
    assert get("ProtectSystem") == ["strict"]
    # What the daemon writes is writable: the packaged spool and the accounting log's folder.
    config = packaged_config(unpacked)
    writable = " ".join(get("ReadWritePaths")).split()
    assert config["server"]["spool_dir"] in writable, writable
    assert str(Path(config["server"]["accounting_log"]).parent) in writable, writable
    # The stop timeout is above the graceful stop's (runtime/core.rs STOP_GRACE_MS).
    grace_ms = int(
        re.search(r"const STOP_GRACE_MS: u64 = ([\d_]+);", (ROOT / "engine/src/runtime/core.rs").read_text())
        .group(1).replace("_", "")
    )
    assert int(get("TimeoutStopSec")[0]) > grace_ms / 1000 + 10, (get("TimeoutStopSec"), grace_ms)
    # Memlock: at least glommio's floor (runtime/host_limits.rs), in the unit's units.
    factors = re.search(
        r"MEMLOCK_MIN_BYTES: u64 = ([\d *]+);", (ROOT / "engine/src/runtime/host_limits.rs").read_text()
    ).group(1)
    floor = 1
    for factor in factors.split("*"):  # a product of integer literals, e.g. `512 * 1024`
        floor *= int(factor)
    memlock = get("LimitMEMLOCK")[0]
    assert memlock.endswith("M") and int(memlock[:-1]) << 20 >= floor, memlock
    assert int(get("LimitNOFILE")[0]) >= 1 << 20


# -- logrotate


def test_logrotate_file_rotates_a_running_daemons_accounting_log(unpacked, volley, sink_factory, tmp_path):
    """The shipped logrotate file, with only the log's path and owner changed for the test, run by
    logrotate itself: its postrotate (`systemctl kill --signal=USR1 --kill-whom=main
    volley.service`) reaches the daemon through a `systemctl` stub that signals it."""
    shipped = (unpacked / "etc/logrotate.d/volley").read_text()
    config = packaged_config(unpacked)
    assert shipped.splitlines()[2].startswith(config["server"]["accounting_log"] + " {"), shipped
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()
    volley.send("alice@src.test", ["one@dest.test"], message("one"))
    volley.wait_acct("delivery", count=1)

    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "systemctl.calls"
    (stubs / "systemctl").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        '[ "$*" = "kill --signal=USR1 --kill-whom=main volley.service" ] || exit 1\n'
        f"kill -USR1 {volley.process.pid}\n"
    )
    (stubs / "systemctl").chmod(0o755)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        shipped.replace(config["server"]["accounting_log"], str(volley.acct_path)).replace(
            "volley adm", f"{user} {group}"
        )
    )
    done = subprocess.run(
        ["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls.read_text().strip() == "kill --signal=USR1 --kill-whom=main volley.service"
    rotated = volley.acct_path.with_name(volley.acct_path.name + ".1")
    assert any(e.get("recipient") == "one@dest.test" for e in read_json_lines(rotated))
    wait_until(lambda: "accounting log reopened" in volley.stderr_path.read_text(errors="replace"), 10, "the reopen")
    volley.send("alice@src.test", ["two@dest.test"], message("two"))
    volley.wait_acct("delivery", count=1, recipient="two@dest.test")
    assert all(e.get("recipient") != "two@dest.test" for e in read_json_lines(rotated))


# -- maintainer scripts


def run_script(unpacked_control: Path, script: str, args: list[str], root: Path, stubs: Path, calls: Path):
    return subprocess.run(
        ["sh", str(unpacked_control / script), *args],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "DPKG_ROOT": str(root), "PATH": f"{stubs}:{os.environ['PATH']}", "CALLS": str(calls)},
    )


@pytest.fixture
def control_dir(deb, tmp_path) -> Path:
    out = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(out)], check=True)
    return out


def make_stubs(stubs: Path, user_exists: bool, override_listed: bool) -> None:
    """Commands that would change this machine, logging their arguments to $CALLS."""
    stubs.mkdir()
    scripts = {
        "getent": f"exit {0 if user_exists else 2}",
        "adduser": "",
        "chown": "",
        "systemctl": "",
        "dpkg-statoverride": f'[ "$1" = --list ] && exit {0 if override_listed else 1}',
    }
    for name, body in scripts.items():
        path = stubs / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\n{body}\nexit 0\n')
        path.chmod(0o755)


def test_postinst_makes_the_user_and_directories_and_restarts_only_on_upgrade(control_dir, tmp_path):
    root, stubs, calls = tmp_path / "root", tmp_path / "stubs", tmp_path / "calls"
    root.mkdir()
    make_stubs(stubs, user_exists=False, override_listed=False)
    done = run_script(control_dir, "postinst", ["configure"], root, stubs, calls)
    assert done.returncode == 0, done.stderr
    log = calls.read_text().splitlines()
    assert any(l.startswith("adduser --system --group") and l.endswith(" volley") for l in log), log
    assert f"chown volley:volley {root}/var/spool/volley" in log, log
    assert f"chown volley:adm {root}/var/log/volley" in log, log
    assert "dpkg-statoverride --update --add root volley 0640 /etc/volley/volley.toml" in log, log
    for d in ("var/spool/volley", "var/log/volley"):
        assert stat.S_IMODE((root / d).stat().st_mode) == 0o750, d
    # No systemd running in the root: no systemctl at all. A first install starts nothing.
    assert not any(l.startswith("systemctl") for l in log), log

    # An upgrade on a systemd host: the user exists, a running service restarts on the new binary.
    calls.unlink()
    (root / "run/systemd/system").mkdir(parents=True)
    stubs_again = tmp_path / "stubs2"
    make_stubs(stubs_again, user_exists=True, override_listed=True)
    done = run_script(control_dir, "postinst", ["configure", "0.0.9"], root, stubs_again, calls)
    assert done.returncode == 0, done.stderr
    log = calls.read_text().splitlines()
    assert not any(l.startswith("adduser") for l in log), log
    assert not any("--add" in l for l in log), "the override exists already"
    assert "systemctl daemon-reload" in log and "systemctl try-restart volley.service" in log, log

    # A first install on a systemd host: daemon-reload, nothing started or enabled.
    calls.unlink()
    done = run_script(control_dir, "postinst", ["configure", ""], root, stubs_again, calls)
    log = calls.read_text().splitlines()
    assert [l for l in log if l.startswith("systemctl")] == ["systemctl daemon-reload"], log


def test_prerm_stops_and_purge_removes_spool_logs_and_override(control_dir, tmp_path):
    root, stubs, calls = tmp_path / "root", tmp_path / "stubs", tmp_path / "calls"
    (root / "run/systemd/system").mkdir(parents=True)
    (root / "var/spool/volley/core-0").mkdir(parents=True)
    (root / "var/log/volley").mkdir(parents=True)
    (root / "var/log/volley/accounting.log").write_text("{}\n")
    (root / "etc/volley").mkdir(parents=True)
    make_stubs(stubs, user_exists=True, override_listed=True)
    done = run_script(control_dir, "prerm", ["remove"], root, stubs, calls)
    assert done.returncode == 0, done.stderr
    assert "systemctl stop volley.service" in calls.read_text().splitlines()
    # An upgrade's prerm leaves the service running (postinst restarts it).
    calls.unlink()
    run_script(control_dir, "prerm", ["upgrade", "0.2.0"], root, stubs, calls)
    assert not calls.exists() or "stop" not in calls.read_text()
    # Remove keeps the spool (queued mail); purge deletes it.
    run_script(control_dir, "postrm", ["remove"], root, stubs, calls)
    assert (root / "var/spool/volley/core-0").is_dir()
    done = run_script(control_dir, "postrm", ["purge"], root, stubs, calls)
    assert done.returncode == 0, done.stderr
    assert not (root / "var/spool/volley").exists() and not (root / "var/log/volley").exists()
    assert not (root / "etc/volley").exists()
    assert "dpkg-statoverride --remove /etc/volley/volley.toml" in calls.read_text().splitlines()
