#!/usr/bin/env python3
"""Power-loss test for Volley's spool: cut the power under concurrent SMTP load (keep only what
reached the block device, drop the page cache), recover on what is left, and prove that every
message answered 250 reaches the sink at least once.

Why: the crash test (crash_test.py) SIGKILLs the daemon, but the kernel keeps the page cache, so
records written into the segment mappings survive whether or not they were ever fdatasync'd. Here
the spool lives on an ext4 file system on a loop device, and a "power cut" keeps only the bytes the
loop device received:

  1. an ext4 image (sparse, 1 GiB, in /dev/shm when there is one) is attached to a loop device and
     mounted with `commit=600` (the journal commits only when a sync forces it); for the duration of
     the test vm.dirty_expire_centisecs and vm.dirty_writeback_centisecs are raised to an hour, so
     background writeback does not rescue pages nobody synced (the old values are restored at exit),
  2. `volley-bench sink` and `volley serve` (spool on the image) run as in the crash test, with
     --clients SMTP client threads sending uniquely identified messages,
  3. after a random 0.3-2 s the cut: SIGSTOP volley and wait until every thread of it is stopped
     (so no further 250 can leave it), wait until the loop device has no request in flight and its
     write counter stands still, then copy the image's backing file (`cp --sparse=always`). The copy
     is the disk after a power cut: what an fdatasync or a journal commit pushed to the device is
     in it, dirty pages of the page cache are not. Volley is then SIGKILLed and the old image
     unmounted and detached,
  4. the copy is attached and mounted (ext4 replays its journal, as at boot after a power loss),
     volley starts on it (spool recovery) and the load goes on; --rounds cuts in all,
  5. the clients stop, volley starts one last time and delivers; the test then checks that every
     acknowledged (Message-ID, recipient) pair reached the sink.

Every 250 a client ever read was sent before its round's cut (the daemon was stopped, then killed,
before the copy), hence after the commit it reports: each must survive, whichever round it was in.

At each cut the Message-IDs present in the segment files are listed twice: as the running system
saw them (page cache) and on the copy after journal replay. "Only in the page cache" = the first
minus the second: records written but not yet durable. An acknowledged message among them breaks
the promise of the 250 even when it had already been delivered before the cut; it is counted as a
loss ("acknowledged, not durable at a cut") next to the end-to-end losses.

Exit status: 0 when nothing acknowledged was lost, 1 on a loss (or when volley could not recover
from a cut), 2 when the harness itself failed (not root, no loop device, binaries missing).

Control: `--no-fsync` runs volley with `[spool] fsync = false`; the same method must then report
losses (see docs/architecture.md, "Power-loss test").

Needs root (losetup, mount, sysctl). Standard library only; shares its load generator, sink
reader and daemon handling with crash_test.py.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crash_test as base  # noqa: E402  (the shared load generator, sink reader, daemon handle)

SYSCTL_DIR = "/proc/sys/vm"
# An hour: no page dirtied during the test reaches the disk unless something syncs it.
WRITEBACK_SYSCTLS = {"dirty_expire_centisecs": "360000", "dirty_writeback_centisecs": "360000"}
# The values to put back, kept on disk while raised: a run killed with SIGKILL cannot restore them,
# so the next run does.
SYSCTL_STATE = "/run/volley-power-loss-test.sysctl.json"


class HarnessError(Exception):
    """The test machinery failed (exit 2), as opposed to Volley losing mail (exit 1)."""


def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


class Disk:
    """One ext4 image at a time, attached to a loop device and mounted at `mountpoint`."""

    def __init__(self, mountpoint, mount_options):
        self.mountpoint = mountpoint
        self.mount_options = mount_options
        self.image = None
        self.device = None
        self.mounted = False

    def attach_and_mount(self, image):
        self.image = image
        self.device = run(["losetup", "--find", "--show", image])
        run(["mount", "-t", "ext4", "-o", self.mount_options, self.device, self.mountpoint])
        self.mounted = True

    def write_stats(self):
        """(writes completed, requests in flight) of the loop device, from sysfs."""
        name = os.path.basename(self.device)
        with open(f"/sys/block/{name}/stat") as f:
            fields = f.read().split()
        with open(f"/sys/block/{name}/inflight") as f:
            inflight = sum(int(x) for x in f.read().split())
        return int(fields[4]), inflight  # field 5: writes completed

    def wait_quiet(self, still_s=0.15, timeout_s=5.0):
        """Waits until no request is in flight and the write counter has not moved for still_s."""
        deadline = time.monotonic() + timeout_s
        last = self.write_stats()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = self.write_stats()
            if now != last or now[1] != 0:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= still_s:
                return now
        raise HarnessError(f"{self.device} never went quiet (still writing after {timeout_s} s)")

    def unmount_and_detach(self):
        if self.mounted:
            if subprocess.run(["umount", self.mountpoint], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", self.mountpoint], capture_output=True)
            self.mounted = False
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = None


def wait_stopped(pid, timeout_s=5.0):
    """Waits until every thread of `pid` is in the stopped state (io_uring workers aside: they
    only finish requests already submitted, and send nothing to clients)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = 0
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except FileNotFoundError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            state = stat[stat.rindex(")") + 2]
            if state not in "Tt" and not comm.startswith("iou-"):
                running += 1
        if running == 0:
            return
        time.sleep(0.005)
    raise HarnessError(f"volley (pid {pid}) did not stop within {timeout_s} s of SIGSTOP")


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    """CRC32C (Castagnoli), continued from `crc` as the crc32c crate's `crc32c_append`."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def segment_message_payloads(data, number):
    """The payloads of the message records recovery would read in segment `number` (its bytes
    `data`), walked as docs/spool-format.md describes: record headers checked under the
    segment's seed (format 2) or unseeded (format 1), up to the first zero or invalid header.
    Raw bytes are not enough: a reused file still holds old records past its written part."""
    header = data[:64]
    if header[:8] != b"VOLLEYSP" or crc32c(header[:60]) != int.from_bytes(header[60:64], "little"):
        return
    version = int.from_bytes(header[8:10], "little")
    if version == 2:
        if int.from_bytes(header[12:16], "little") != number:
            return  # a reused file whose new header never reached the disk: empty
        seed = crc32c(b"VRSEGMNT" + number.to_bytes(4, "little"))
    elif version == 1:
        seed = 0
    else:
        return
    pos = 64
    while pos + 16 <= len(data):
        head = data[pos:pos + 16]
        if head[:2] != b"VR" or crc32c(head[:12], seed) != int.from_bytes(head[12:16], "little"):
            return  # a zero header ends the written part; anything else is a torn tail
        payload_len = int.from_bytes(head[4:8], "little")
        if head[2] == 1:
            yield data[pos + 16:pos + 16 + payload_len]
        pos += (16 + payload_len + 7) // 8 * 8


def spooled_message_ids(spool_dir, pattern):
    """The Message-IDs in the message records of the segment files under spool_dir (read through
    the page cache)."""
    found = set()
    if not os.path.isdir(spool_dir):
        return found
    for core in sorted(os.listdir(spool_dir)):
        core_dir = os.path.join(spool_dir, core)
        if not os.path.isdir(core_dir):
            continue
        for name in os.listdir(core_dir):
            number = name.split(".")[0]
            if ".seg" not in name or not number.isdigit():
                continue
            try:
                with open(os.path.join(core_dir, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            for payload in segment_message_payloads(data, int(number)):
                found.update(m.decode() for m in pattern.findall(payload))
    return found


class WritebackSysctls:
    """Raises the page-cache writeback delays; `restore` puts the old values back."""

    def __init__(self):
        self.saved = {}

    def raise_delays(self):
        if os.path.exists(SYSCTL_STATE):
            # A previous run died with the delays raised: put its saved values back first.
            with open(SYSCTL_STATE) as f:
                self.saved = json.load(f)
            print(f"power_loss_test: restoring vm writeback settings left by a killed run: "
                  f"{self.saved}", file=sys.stderr)
            self.restore()
        for name in WRITEBACK_SYSCTLS:
            with open(os.path.join(SYSCTL_DIR, name)) as f:
                self.saved[name] = f.read().strip()
        with open(SYSCTL_STATE, "w") as f:
            json.dump(self.saved, f)
        for name, value in WRITEBACK_SYSCTLS.items():
            with open(os.path.join(SYSCTL_DIR, name), "w") as f:
                f.write(value)

    def restore(self):
        for name, value in self.saved.items():
            try:
                with open(os.path.join(SYSCTL_DIR, name), "w") as f:
                    f.write(value)
            except OSError as e:
                print(f"power_loss_test: could not restore vm.{name}={value}: {e}", file=sys.stderr)
                return  # keep SYSCTL_STATE for the next run
        self.saved.clear()
        try:
            os.remove(SYSCTL_STATE)
        except FileNotFoundError:
            pass


RECOVERY_EVENTS = {
    "records skipped (payload CRC)": re.compile(r"CRC mismatch in a \d+-byte record"),
    "torn tails cut": re.compile(r"torn tail at offset"),
    "damaged headers (older segment)": re.compile(r"damaged record header"),
    "segments set aside as damaged": re.compile(r"setting damaged segment"),
}


def recovery_events(work):
    """How often recovery met each kind of damage, from volley's logs (proof the cuts tore records)."""
    counts = dict.fromkeys(RECOVERY_EVENTS, 0)
    for name in sorted(os.listdir(work)):
        if not (name.startswith("volley-") and name.endswith(".log")):
            continue
        with open(os.path.join(work, name), errors="replace") as f:
            for line in f:
                for what, pattern in RECOVERY_EVENTS.items():
                    if pattern.search(line):
                        counts[what] += 1
    return counts


def preflight(args):
    if os.geteuid() != 0:
        return "needs root (losetup, mount, sysctl)"
    for tool in ("losetup", "mount", "umount", "mkfs.ext4", "cp"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop devices unavailable)"
    for binary in (args.volley, args.bench):
        if not os.access(binary, os.X_OK):
            return f"{binary} not found; build with `cargo build -p volley-engine -p volley-bench`"
    return None


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="power cuts")
    p.add_argument("--cut-min-s", type=float, default=0.3, help="earliest cut after volley starts")
    p.add_argument("--cut-max-s", type=float, default=2.0, help="latest cut after volley starts")
    p.add_argument("--image-mib", type=int, default=1024, help="size of the (sparse) ext4 image")
    p.add_argument("--mount-options", default="commit=600",
                   help="ext4 mount options; commit=600 leaves journal commits to explicit syncs")
    p.add_argument("--keep-writeback", action="store_true",
                   help="leave vm.dirty_*_centisecs alone (weaker: background writeback may save "
                        "pages nobody synced)")
    p.add_argument("--no-fsync", action="store_true",
                   help="control run: volley with [spool] fsync = false; must report losses")
    base.add_load_arguments(p, root, settle_s=2.0)
    args = p.parse_args()

    problem = preflight(args)
    if problem:
        print(f"power_loss_test: {problem}", file=sys.stderr)
        return 2
    # CI's `timeout` sends SIGTERM: unwind through the finally blocks (unmount, detach, sysctls).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))

    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    work = args.workdir or tempfile.mkdtemp(prefix="volley-powerloss-")
    os.makedirs(work, exist_ok=True)
    image_dir = tempfile.mkdtemp(prefix="volley-powerloss-img-",
                                 dir="/dev/shm" if os.path.isdir("/dev/shm") else work)
    mountpoint = os.path.join(work, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    spool_dir = os.path.join(mountpoint, "spool")
    ports = {"smtp": base.free_port(), "sink": base.free_port(), "api": base.free_port()}
    config_path = os.path.join(work, "volley.toml")
    base.write_config(config_path, args, work, ports, spool_dir=spool_dir, fsync=not args.no_fsync)
    sink_log = os.path.join(work, "sink.jsonl")
    run_id = f"{seed:08x}"
    id_pattern = re.compile(rb"Message-ID: (<crash-" + run_id.encode() + rb"-\d+-\d+@crash\.test>)")
    print(f"power_loss_test: seed {seed}, workdir {work}, {args.rounds} cuts, {args.clients} clients"
          f"{', fsync = false (control)' if args.no_fsync else ''}")

    disk = Disk(mountpoint, args.mount_options)
    sysctls = WritebackSysctls()
    daemon = base.Daemon(args, config_path, work, ports["smtp"])
    ledger = base.Ledger()
    stop = threading.Event()
    threads = []
    sink = None
    sink_out = None
    status = 2
    try:
        image = os.path.join(image_dir, "disk-00.img")
        with open(image, "wb") as f:
            f.truncate(args.image_mib << 20)
        # No lazy init: ext4lazyinit would keep writing to the device in the background.
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image])
        if not args.keep_writeback:
            sysctls.raise_delays()
        disk.attach_and_mount(image)

        sink, sink_out = base.start_sink(args, work, ports["sink"], sink_log)
        if not base.wait_for_port(ports["sink"], sink, 10):
            raise HarnessError("the sink did not start (see sink.out)")
        threads = base.start_clients(args, ports["smtp"], run_id, ledger, stop, rng)

        cuts = []  # per cut: page-cache view and disk view of the spooled Message-IDs
        started = time.monotonic()
        for round_no in range(1, args.rounds + 1):
            proc = daemon.start()
            delay = rng.uniform(args.cut_min_s, args.cut_max_s)
            time.sleep(delay)
            if proc.poll() is not None:
                log = f"{work}/volley-{daemon.starts:03}.log"
                if round_no == 1:
                    raise HarnessError(f"volley exited on a fresh disk (status {proc.returncode}; "
                                       f"see {log})")
                print(f"FAIL: volley did not survive recovery after cut {round_no - 1} "
                      f"(status {proc.returncode}; see {log})")
                status = 1
                return status

            # The cut. Once every thread is stopped no 250 can leave volley any more.
            proc.send_signal(signal.SIGSTOP)
            wait_stopped(proc.pid)
            quiet = disk.wait_quiet()
            next_image = os.path.join(image_dir, f"disk-{round_no:02}.img")
            run(["cp", "--sparse=always", disk.image, next_image])
            moved = disk.write_stats() != quiet
            in_page_cache = spooled_message_ids(spool_dir, id_pattern)
            daemon.kill()
            disk.unmount_and_detach()
            os.remove(image)
            image = next_image

            # Power back on: journal replay at mount, then what the disk really holds.
            disk.attach_and_mount(image)
            on_disk = spooled_message_ids(spool_dir, id_pattern)
            cuts.append((in_page_cache, on_disk))
            with ledger.lock:
                acked = len(ledger.acked)
            print(f"  cut {round_no:2}: after {delay:.2f} s, {acked} acknowledged so far; "
                  f"spooled {len(in_page_cache)} in the page cache, {len(on_disk)} on disk, "
                  f"{len(in_page_cache - on_disk)} only in the page cache"
                  f"{' (device written during the copy!)' if moved else ''}")
        stop.set()
        for t in threads:
            t.join(timeout=10)
        load_s = time.monotonic() - started

        # Final start on the last image: recovery, then delivery of everything.
        proc = daemon.start()
        if not base.wait_for_port(ports["smtp"], proc, args.start_timeout_s):
            print(f"FAIL: volley did not come back after the last cut "
                  f"(see {work}/volley-{daemon.starts:03}.log)")
            status = 1
            return status
        with ledger.lock:
            acked_map = dict(ledger.acked)
        wanted = {(mid, r.lower()) for mid, rs in acked_map.items() for r in rs}
        deadline = time.monotonic() + args.drain_timeout_s
        while True:
            pairs, messages = base.read_sink_log(sink_log)
            missing = wanted - set(pairs)
            if not missing or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.25)
        if not missing:
            time.sleep(args.settle_s)
            pairs, messages = base.read_sink_log(sink_log)
            missing = wanted - set(pairs)
        drain_s = time.monotonic() - started - load_s
        daemon.stop()

        acked_ids = set(acked_map)
        page_cache_only = set()
        for in_page_cache, on_disk in cuts:
            page_cache_only |= in_page_cache - on_disk
        not_durable = sorted(page_cache_only & acked_ids)
        missing_ids = sorted({mid for mid, _ in missing})
        dup_pairs = {k: n for k, n in pairs.items() if n > 1}
        dup_ids = sorted({mid for mid, _ in dup_pairs})
        unacked = sorted(mid for mid in set(messages) - acked_ids
                         if mid.startswith(f"<crash-{run_id}-"))
        print(f"power_loss_test: {args.rounds} cuts in {load_s:.1f} s, drain {drain_s:.1f} s")
        print(f"  attempted                         {ledger.attempted}")
        print(f"  acknowledged (250)                {len(acked_ids)} messages, {len(wanted)} recipients")
        print(f"  delivered to the sink             {len(messages)} messages, {len(pairs)} recipients")
        print(f"  only in the page cache at a cut   {len(page_cache_only)} messages "
              f"({len(page_cache_only) - len(not_durable)} never acknowledged, "
              f"{len(not_durable)} acknowledged)")
        print(f"  acknowledged, not durable at cut  {len(not_durable)} messages")
        print(f"  lost (acked, never delivered)     {len(missing_ids)} messages, {len(missing)} recipients")
        print(f"  duplicates                        {len(dup_ids)} messages, {len(dup_pairs)} recipients "
              f"({sum(n - 1 for n in dup_pairs.values())} extra deliveries)")
        print(f"  delivered, never acknowledged     {len(unacked)} messages")
        print(f"  client errors                     {dict(ledger.errors.most_common(6))}")
        events = ", ".join(f"{n} {what}" for what, n in recovery_events(work).items())
        print(f"  recovery after the cuts           {events}")
        reused = base.segments_reused(work)
        print(f"  segments from free files          {reused}")
        if missing_ids or not_durable:
            print("FAIL: acknowledged messages did not survive a power cut:")
            for mid in sorted(set(missing_ids) | set(not_durable))[:50]:
                rcpts = sorted(r for m, r in missing if m == mid)
                how = "never delivered" if rcpts else "not durable at a cut (delivered before it)"
                print(f"  {mid} {how} {' '.join(rcpts)}")
            status = 1
        elif not acked_ids:
            print("FAIL: no message was acknowledged at all; the test proved nothing")
            status = 2
        elif reused == 0 and base.reuse_expected(args):
            print("FAIL: no segment was made out of a finished file; the run did not test reuse")
            status = 2
        else:
            print("PASS: every acknowledged message survived the power cuts and reached the sink")
            status = 0
        return status
    except HarnessError as e:
        print(f"power_loss_test: {e}", file=sys.stderr)
        status = 2
        return status
    finally:
        stop.set()
        daemon.kill()
        if sink is not None:
            sink.send_signal(signal.SIGTERM)
            try:
                sink.wait(timeout=5)
            except subprocess.TimeoutExpired:
                sink.kill()
                sink.wait()
        if sink_out is not None:
            sink_out.close()
        disk.unmount_and_detach()
        sysctls.restore()
        shutil.rmtree(image_dir, ignore_errors=True)
        if status == 0 and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif status != 0:
            print(f"power_loss_test: files kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
