//! volley-send-bench: what it costs to send one message body from a read-only memory map over
//! loopback TCP, four ways (issue 16: "zero times copied on the way out").
//!
//! Bodies of `--size` bytes are taken from successive offsets of a memory-mapped scratch file (so
//! the source pages rotate as spool segments' do) and sent `--count` times on one connection to a
//! receiver thread that reads and discards them. Sender and receiver are pinned to different CPUs.
//! Modes:
//! - `write`: blocking send(2) of the whole body, looping on short writes (Volley's path today);
//! - `msg-zerocopy`: SO_ZEROCOPY + send(MSG_ZEROCOPY), completions reaped from the error queue,
//!   at most `--zc-outstanding` sends not yet completed;
//! - `uring-send`: IORING_OP_SEND, one in flight (keeps the byte order without links);
//! - `uring-send-zc`: IORING_OP_SEND_ZC, one send in flight, its notifications reaped as they
//!   come, at most `--zc-outstanding` pending.
//!
//! Per mode and round: MiB/s, sends/s, CPU per MiB sent of the sender thread, of the receiver
//! thread and of the whole process, and for the zerocopy modes the fraction of sends the kernel
//! reported as copied anyway. The receiver checks the byte count and samples of every body.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use io_uring::{IoUring, Probe, cqueue, opcode, types};
use memmap2::{Mmap, MmapOptions};

// Not exported by libc 0.2 for x86_64 / not in io-uring's public API; values from the uapi
// headers (asm-generic/socket.h, linux/errqueue.h, linux/io_uring.h).
const SO_ZEROCOPY: libc::c_int = 60;
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;
const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// Bytes compared at the start, middle and end of every body by the receiver.
const SAMPLE: usize = 64;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Write,
    MsgZerocopy,
    UringSend,
    UringSendZc,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Write,
        Mode::MsgZerocopy,
        Mode::UringSend,
        Mode::UringSendZc,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Write => "write",
            Mode::MsgZerocopy => "msg-zerocopy",
            Mode::UringSend => "uring-send",
            Mode::UringSendZc => "uring-send-zc",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Send bodies from a memory map over loopback TCP: write, MSG_ZEROCOPY, io_uring")]
struct Args {
    /// Bytes per body.
    #[arg(long, default_value_t = 102_400)]
    size: usize,
    /// Bodies sent per mode and round.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Rounds; odd rounds run the modes in reverse order.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Modes to run (repeatable); all when absent.
    #[arg(long, value_enum)]
    mode: Vec<Mode>,
    /// CPU the sending thread is pinned to.
    #[arg(long, default_value_t = 0)]
    sender_cpu: usize,
    /// CPU the receiving thread is pinned to.
    #[arg(long, default_value_t = 1)]
    receiver_cpu: usize,
    /// Size of the memory-mapped scratch file the bodies are taken from, in MiB.
    #[arg(long, default_value_t = 64)]
    map_mib: usize,
    /// Directory for the scratch file (unlinked as soon as it is mapped).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Zerocopy sends (or send_zc notifications) allowed to be outstanding.
    #[arg(long, default_value_t = 32)]
    zc_outstanding: u64,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("arguments: {0}")]
    Args(String),
    #[error("{mode}: verification failed: {detail}")]
    Verify { mode: &'static str, detail: String },
    #[error("{0} thread panicked")]
    Panic(&'static str),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> BenchError {
    move |source| BenchError::Io { what, source }
}

fn last_os(what: &'static str) -> BenchError {
    BenchError::Io {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Where body `i` starts in the map: successive bodies, wrapping at the last whole one.
fn body_offset(i: u64, size: usize, map_len: usize) -> usize {
    let bodies = (map_len / size) as u64;
    (i % bodies) as usize * size
}

fn pin_to(cpu: usize) -> Result<(), BenchError> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(BenchError::Args(format!("cpu {cpu} out of range")));
    }
    // SAFETY: cpu < CPU_SETSIZE checked above; pid 0 is the calling thread.
    let rc = unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(last_os("sched_setaffinity"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    user_us: u64,
    sys_us: u64,
}

impl Cpu {
    fn now(who: libc::c_int) -> Cpu {
        let mut ru = MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: ru is a valid out-pointer; RUSAGE_SELF/RUSAGE_THREAD cannot fail.
        let ru = unsafe {
            libc::getrusage(who, ru.as_mut_ptr());
            ru.assume_init()
        };
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Cpu {
            user_us: us(ru.ru_utime),
            sys_us: us(ru.ru_stime),
        }
    }

    fn since(self, start: Cpu) -> Cpu {
        Cpu {
            user_us: self.user_us.saturating_sub(start.user_us),
            sys_us: self.sys_us.saturating_sub(start.sys_us),
        }
    }

    fn total_us(self) -> u64 {
        self.user_us + self.sys_us
    }
}

/// The scratch file, filled with pseudo-random bytes, mapped read-only and populated (so no round
/// pays the first page faults), then unlinked: the mapping keeps it alive.
fn make_map(dir: &Path, mib: usize) -> Result<Mmap, BenchError> {
    let path = dir.join(format!("volley-send-bench.{}.tmp", std::process::id()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("create scratch file"))?;
    let filled = (|| -> Result<Mmap, BenchError> {
        let mut rng = fastrand::Rng::with_seed(0x766f_6c6c_6579);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..mib {
            rng.fill(&mut chunk);
            file.write_all(&chunk)
                .map_err(io_err("fill scratch file"))?;
        }
        file.sync_data().map_err(io_err("sync scratch file"))?;
        let ro = File::open(&path).map_err(io_err("reopen scratch file"))?;
        // SAFETY: the file is ours (create_new) and unlinked below; nothing writes it again.
        unsafe { MmapOptions::new().populate().map(&ro) }.map_err(io_err("mmap scratch file"))
    })();
    let removed = std::fs::remove_file(&path).map_err(io_err("unlink scratch file"));
    let map = filled?;
    removed?;
    Ok(map)
}

/// What the receiving thread saw.
struct Received {
    bytes: u64,
    sample_mismatches: u64,
    cpu: Cpu,
    last_byte: Instant,
}

/// Reads until EOF, comparing the start, middle and end of every body with the map.
fn receive(
    listener: TcpListener,
    cpu: usize,
    map: Arc<Mmap>,
    size: usize,
) -> Result<Received, BenchError> {
    pin_to(cpu)?;
    let (mut stream, _) = listener.accept().map_err(io_err("accept"))?;
    let start_cpu = Cpu::now(libc::RUSAGE_THREAD);
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos: u64 = 0;
    let mut mismatches = 0u64;
    let mut last_byte = Instant::now();
    let sample = SAMPLE.min(size);
    let mid = (size / 2).min(size - sample);
    let windows = [0, mid, size - sample];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(BenchError::Io {
                    what: "recv",
                    source: e,
                });
            }
        };
        last_byte = Instant::now();
        let chunk = &buf[..n];
        let end = pos + n as u64;
        let first_body = pos / size as u64;
        let last_body = (end - 1) / size as u64;
        for body in first_body..=last_body {
            let body_start = body * size as u64;
            let src = body_offset(body, size, map.len());
            for w in windows {
                let lo = (body_start + w as u64).max(pos);
                let hi = (body_start + (w + sample) as u64).min(end);
                if lo >= hi {
                    continue;
                }
                let got = &chunk[(lo - pos) as usize..(hi - pos) as usize];
                let at = src + (lo - body_start) as usize;
                if got != &map[at..at + got.len()] {
                    mismatches += 1;
                }
            }
        }
        pos = end;
    }
    Ok(Received {
        bytes: pos,
        sample_mismatches: mismatches,
        cpu: Cpu::now(libc::RUSAGE_THREAD).since(start_cpu),
        last_byte,
    })
}

/// What the sending thread did.
#[derive(Default)]
struct Sent {
    bytes: u64,
    /// send(2) calls or SQEs that moved bytes.
    calls: u64,
    /// Zerocopy sends the kernel reported as complete, and how many of those it copied anyway.
    zc_completed: u64,
    zc_copied: u64,
    cpu: Cpu,
    started: Option<Instant>,
}

impl Sent {
    fn starting_now() -> Sent {
        Sent {
            started: Some(Instant::now()),
            ..Sent::default()
        }
    }

    /// Counts an io_uring send's result (octets, or -errno) and moves `body` past what went;
    /// EINTR and EAGAIN leave it to be sent again.
    fn uring_result(
        &mut self,
        what: &'static str,
        result: i32,
        body: &mut &[u8],
    ) -> Result<(), BenchError> {
        match result {
            n if n > 0 => {
                *body = &body[n as usize..];
                self.bytes += n as u64;
                self.calls += 1;
                Ok(())
            }
            0 => Err(io_err(what)(io::ErrorKind::WriteZero.into())),
            e if e == -libc::EINTR || e == -libc::EAGAIN => Ok(()),
            e => Err(BenchError::Io {
                what,
                source: io::Error::from_raw_os_error(-e),
            }),
        }
    }
}

enum Outcome {
    Done(Sent),
    Unsupported(String),
}

struct Plan<'a> {
    map: &'a [u8],
    size: usize,
    count: u64,
    zc_outstanding: u64,
}

impl Plan<'_> {
    fn body(&self, i: u64) -> &[u8] {
        let at = body_offset(i, self.size, self.map.len());
        &self.map[at..at + self.size]
    }
}

fn send_write(stream: &mut TcpStream, plan: &Plan) -> Result<Outcome, BenchError> {
    let mut out = Sent::starting_now();
    for i in 0..plan.count {
        let mut body = plan.body(i);
        while !body.is_empty() {
            match stream.write(body) {
                Ok(0) => return Err(io_err("send")(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    body = &body[n..];
                    out.bytes += n as u64;
                    out.calls += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(BenchError::Io {
                        what: "send",
                        source: e,
                    });
                }
            }
        }
    }
    Ok(Outcome::Done(out))
}

/// Reads every zerocopy completion queued on the socket's error queue (never blocks).
fn reap_errqueue(fd: libc::c_int, out: &mut Sent) -> Result<(), BenchError> {
    loop {
        let mut control = [0u64; 16];
        // SAFETY: msghdr is plain data; zeroed means no name and no iovec.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: msg points at live, correctly sized buffers.
        let rc = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => Err(BenchError::Io {
                    what: "recvmsg(MSG_ERRQUEUE)",
                    source: e,
                }),
            };
        }
        // SAFETY: the kernel filled msg_control; the CMSG_* walkers stay inside msg_controllen.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: cmsg is non-null and inside the control buffer.
            let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
            let is_recverr = (level == libc::SOL_IP && kind == libc::IP_RECVERR)
                || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR);
            if is_recverr {
                // SAFETY: IP_RECVERR data starts with a sock_extended_err (possibly unaligned).
                let ee = unsafe {
                    std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                    )
                };
                if ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY || ee.ee_errno != 0 {
                    return Err(BenchError::Io {
                        what: "zerocopy completion",
                        source: io::Error::from_raw_os_error(ee.ee_errno as i32),
                    });
                }
                // [ee_info, ee_data] is an inclusive range of send ids, coalesced by the kernel
                // only across sends with the same code.
                let n = u64::from(ee.ee_data.wrapping_sub(ee.ee_info)) + 1;
                out.zc_completed += n;
                if ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0 {
                    out.zc_copied += n;
                }
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
    }
}

/// Waits (up to 10 s) until the error queue has something, then reaps it.
fn wait_errqueue(fd: libc::c_int, out: &mut Sent) -> Result<(), BenchError> {
    // POLLERR is reported whatever `events` says; asking for nothing else keeps POLLOUT quiet.
    let mut pfd = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(BenchError::Io {
                what: "poll",
                source: e,
            });
        }
    } else if rc == 0 {
        return Err(BenchError::Io {
            what: "zerocopy completions",
            source: io::ErrorKind::TimedOut.into(),
        });
    }
    reap_errqueue(fd, out)
}

fn send_msg_zerocopy(stream: &mut TcpStream, plan: &Plan) -> Result<Outcome, BenchError> {
    let fd = stream.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: fd is a live socket; the option value is a c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Ok(Outcome::Unsupported(format!(
            "setsockopt(SO_ZEROCOPY): {}",
            io::Error::last_os_error()
        )));
    }
    let mut out = Sent::starting_now();
    for i in 0..plan.count {
        let mut body = plan.body(i);
        while !body.is_empty() {
            while out.calls - out.zc_completed >= plan.zc_outstanding {
                wait_errqueue(fd, &mut out)?;
            }
            // SAFETY: body is inside the read-only map, which outlives every completion (all are
            // reaped before this function returns).
            let rc = unsafe {
                libc::send(
                    fd,
                    body.as_ptr().cast(),
                    body.len(),
                    libc::MSG_ZEROCOPY | libc::MSG_NOSIGNAL,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Out of option memory for notifications: free some by reaping.
                    Some(libc::ENOBUFS) => {
                        wait_errqueue(fd, &mut out)?;
                        continue;
                    }
                    _ => {
                        return Err(BenchError::Io {
                            what: "send(MSG_ZEROCOPY)",
                            source: e,
                        });
                    }
                }
            }
            let n = rc as usize;
            body = &body[n..];
            out.bytes += n as u64;
            // Every send that returns > 0 takes one notification id.
            out.calls += 1;
        }
    }
    while out.zc_completed < out.calls {
        wait_errqueue(fd, &mut out)?;
    }
    Ok(Outcome::Done(out))
}

fn new_ring(opcode: u8, name: &str) -> Result<Result<IoUring, String>, BenchError> {
    let ring = match IoUring::new(64) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("io_uring_setup: {e}"))),
    };
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(io_err("io_uring probe"))?;
    if !probe.is_supported(opcode) {
        return Ok(Err(format!("{name} not supported by this kernel")));
    }
    Ok(Ok(ring))
}

fn next_cqe(ring: &mut IoUring) -> Result<cqueue::Entry, BenchError> {
    loop {
        if let Some(cqe) = ring.completion().next() {
            return Ok(cqe);
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(BenchError::Io {
                    what: "io_uring_enter",
                    source: e,
                });
            }
        }
    }
}

fn push(ring: &mut IoUring, sqe: &io_uring::squeue::Entry) -> Result<(), BenchError> {
    // SAFETY: the buffer an SQE points at lies in the map, which outlives the ring's use here.
    unsafe { ring.submission().push(sqe) }.map_err(|_| BenchError::Io {
        what: "io_uring submission queue",
        source: io::ErrorKind::OutOfMemory.into(),
    })
}

fn send_uring(stream: &mut TcpStream, plan: &Plan) -> Result<Outcome, BenchError> {
    let mut ring = match new_ring(opcode::Send::CODE, "IORING_OP_SEND")? {
        Ok(r) => r,
        Err(why) => return Ok(Outcome::Unsupported(why)),
    };
    let fd = types::Fd(stream.as_raw_fd());
    let mut out = Sent::starting_now();
    for i in 0..plan.count {
        let mut body = plan.body(i);
        while !body.is_empty() {
            let sqe = opcode::Send::new(fd, body.as_ptr(), body.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build();
            push(&mut ring, &sqe)?;
            let cqe = next_cqe(&mut ring)?;
            out.uring_result("io_uring send", cqe.result(), &mut body)?;
        }
    }
    Ok(Outcome::Done(out))
}

fn send_uring_zc(stream: &mut TcpStream, plan: &Plan) -> Result<Outcome, BenchError> {
    let mut ring = match new_ring(opcode::SendZc::CODE, "IORING_OP_SEND_ZC")? {
        Ok(r) => r,
        Err(why) => return Ok(Outcome::Unsupported(why)),
    };
    let fd = types::Fd(stream.as_raw_fd());
    let mut out = Sent::starting_now();
    // Notifications promised (IORING_CQE_F_MORE on a send's result) and not yet seen.
    let mut promised = 0u64;
    let on_notif = |cqe: &cqueue::Entry, out: &mut Sent| {
        out.zc_completed += 1;
        if cqe.result() as u32 & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
            out.zc_copied += 1;
        }
    };
    for i in 0..plan.count {
        let mut body = plan.body(i);
        while !body.is_empty() {
            while promised - out.zc_completed >= plan.zc_outstanding {
                let cqe = next_cqe(&mut ring)?;
                if !cqueue::notif(cqe.flags()) {
                    return Err(io_err("io_uring send_zc")(
                        io::ErrorKind::InvalidData.into(),
                    ));
                }
                on_notif(&cqe, &mut out);
            }
            let sqe = opcode::SendZc::new(fd, body.as_ptr(), body.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
                .build();
            push(&mut ring, &sqe)?;
            // One send in flight: its result is the next CQE that is not a notification.
            let cqe = loop {
                let cqe = next_cqe(&mut ring)?;
                if cqueue::notif(cqe.flags()) {
                    on_notif(&cqe, &mut out);
                } else {
                    break cqe;
                }
            };
            if cqueue::more(cqe.flags()) {
                promised += 1;
            }
            let e = cqe.result();
            if out.calls == 0 && (e == -libc::EINVAL || e == -libc::EOPNOTSUPP) {
                while out.zc_completed < promised {
                    let cqe = next_cqe(&mut ring)?;
                    on_notif(&cqe, &mut out);
                }
                return Ok(Outcome::Unsupported(format!(
                    "send_zc refused: {}",
                    io::Error::from_raw_os_error(-e)
                )));
            }
            out.uring_result("io_uring send_zc", e, &mut body)?;
        }
    }
    // The map must outlive every notification: wait for all before the ring goes.
    while out.zc_completed < promised {
        let cqe = next_cqe(&mut ring)?;
        if cqueue::notif(cqe.flags()) {
            on_notif(&cqe, &mut out);
        }
    }
    Ok(Outcome::Done(out))
}

/// One mode, one round.
struct Run {
    mode: Mode,
    round: u32,
    result: Result<Figures, String>,
}

#[derive(Clone, Copy)]
struct Figures {
    bytes_sent: u64,
    bytes_received: u64,
    secs: f64,
    mib_per_s: f64,
    sends_per_s: f64,
    send_calls: u64,
    sender_us_per_mib: f64,
    sender_user_us: u64,
    sender_sys_us: u64,
    receiver_us_per_mib: f64,
    process_us_per_mib: f64,
    zc_completed: u64,
    zc_copied: u64,
}

impl Figures {
    fn copied_fraction(&self, mode: Mode) -> Option<f64> {
        match mode {
            Mode::MsgZerocopy | Mode::UringSendZc if self.zc_completed > 0 => {
                Some(self.zc_copied as f64 / self.zc_completed as f64)
            }
            _ => None,
        }
    }
}

fn run_one(
    args: &Args,
    map: &Arc<Mmap>,
    mode: Mode,
) -> Result<Result<Figures, String>, BenchError> {
    let listener =
        TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).map_err(io_err("bind"))?;
    let addr = listener.local_addr().map_err(io_err("local_addr"))?;
    // Connected here, so the receiver's accept cannot wait for a sender that failed early.
    let mut stream = TcpStream::connect(addr).map_err(io_err("connect"))?;
    stream.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
    let process_start = Cpu::now(libc::RUSAGE_SELF);

    let (rmap, size, rcpu) = (Arc::clone(map), args.size, args.receiver_cpu);
    let receiver = thread::Builder::new()
        .name("receiver".into())
        .spawn(move || receive(listener, rcpu, rmap, size))
        .map_err(io_err("spawn receiver"))?;

    let (smap, scpu) = (Arc::clone(map), args.sender_cpu);
    let (count, zc_outstanding) = (args.count, args.zc_outstanding);
    let sender = thread::Builder::new()
        .name("sender".into())
        .spawn(move || -> Result<Outcome, BenchError> {
            pin_to(scpu)?;
            let plan = Plan {
                map: &smap,
                size,
                count,
                zc_outstanding,
            };
            let start = Cpu::now(libc::RUSAGE_THREAD);
            let outcome = match mode {
                Mode::Write => send_write(&mut stream, &plan),
                Mode::MsgZerocopy => send_msg_zerocopy(&mut stream, &plan),
                Mode::UringSend => send_uring(&mut stream, &plan),
                Mode::UringSendZc => send_uring_zc(&mut stream, &plan),
            };
            let cpu = Cpu::now(libc::RUSAGE_THREAD).since(start);
            // Dropping the stream (EOF) ends the receiver whatever happened.
            drop(stream);
            outcome.map(|o| match o {
                Outcome::Done(s) => Outcome::Done(Sent { cpu, ..s }),
                u => u,
            })
        })
        .map_err(io_err("spawn sender"))?;

    let sent = sender.join().map_err(|_| BenchError::Panic("sender"))?;
    let received = receiver
        .join()
        .map_err(|_| BenchError::Panic("receiver"))??;
    let process = Cpu::now(libc::RUSAGE_SELF).since(process_start);
    let sent = match sent? {
        Outcome::Done(s) => s,
        Outcome::Unsupported(why) => return Ok(Err(why)),
    };

    let expected = args.count * args.size as u64;
    if sent.bytes != expected || received.bytes != expected {
        return Err(BenchError::Verify {
            mode: mode.name(),
            detail: format!(
                "expected {expected} bytes, sent {}, received {}",
                sent.bytes, received.bytes
            ),
        });
    }
    if received.sample_mismatches != 0 {
        return Err(BenchError::Verify {
            mode: mode.name(),
            detail: format!("{} sampled windows differ", received.sample_mismatches),
        });
    }
    let started = sent.started.unwrap_or(received.last_byte);
    let secs = received
        .last_byte
        .saturating_duration_since(started)
        .max(Duration::from_micros(1))
        .as_secs_f64();
    let mib = expected as f64 / MIB;
    Ok(Ok(Figures {
        bytes_sent: sent.bytes,
        bytes_received: received.bytes,
        secs,
        mib_per_s: mib / secs,
        sends_per_s: args.count as f64 / secs,
        send_calls: sent.calls,
        sender_us_per_mib: sent.cpu.total_us() as f64 / mib,
        sender_user_us: sent.cpu.user_us,
        sender_sys_us: sent.cpu.sys_us,
        receiver_us_per_mib: received.cpu.total_us() as f64 / mib,
        process_us_per_mib: process.total_us() as f64 / mib,
        zc_completed: sent.zc_completed,
        zc_copied: sent.zc_copied,
    }))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn json_line(args: &Args, kind: &str, mode: Mode, round: Option<u32>, r: &Result<Figures, String>) {
    let mut obj = serde_json::json!({
        "kind": kind,
        "mode": mode.name(),
        "round": round,
        "size": args.size,
        "count": args.count,
    });
    match r {
        Err(why) => {
            obj["supported"] = false.into();
            obj["reason"] = why.as_str().into();
        }
        Ok(f) => {
            obj["supported"] = true.into();
            obj["bytes_sent"] = f.bytes_sent.into();
            obj["bytes_received"] = f.bytes_received.into();
            obj["secs"] = f.secs.into();
            obj["mib_per_s"] = f.mib_per_s.into();
            obj["sends_per_s"] = f.sends_per_s.into();
            obj["send_calls"] = f.send_calls.into();
            obj["sender_cpu_us_per_mib"] = f.sender_us_per_mib.into();
            obj["sender_user_us"] = f.sender_user_us.into();
            obj["sender_sys_us"] = f.sender_sys_us.into();
            obj["receiver_cpu_us_per_mib"] = f.receiver_us_per_mib.into();
            obj["process_cpu_us_per_mib"] = f.process_us_per_mib.into();
            obj["zc_completed"] = f.zc_completed.into();
            obj["zc_copied"] = f.zc_copied.into();
            obj["copied_fraction"] = f.copied_fraction(mode).into();
        }
    }
    println!("{obj}");
}

fn table_row(label: &str, mode: Mode, r: &Result<Figures, String>) {
    match r {
        Err(why) => println!("{label:<8} {:<14} unsupported: {why}", mode.name()),
        Ok(f) => {
            let copied = f
                .copied_fraction(mode)
                .map_or_else(|| "-".to_string(), |c| format!("{:.3}", c));
            println!(
                "{label:<8} {:<14} {:>9.0} {:>10.0} {:>12.1} {:>12.1} {:>12.1} {:>7}",
                mode.name(),
                f.mib_per_s,
                f.sends_per_s,
                f.sender_us_per_mib,
                f.receiver_us_per_mib,
                f.process_us_per_mib,
                copied
            );
        }
    }
}

fn run(args: &Args) -> Result<(), BenchError> {
    if args.size == 0 || args.size > u32::MAX as usize {
        return Err(BenchError::Args("--size must be 1..=u32::MAX".into()));
    }
    if args.count == 0 || args.rounds == 0 || args.zc_outstanding == 0 {
        return Err(BenchError::Args(
            "--count, --rounds and --zc-outstanding must be > 0".into(),
        ));
    }
    if args.map_mib.saturating_mul(1 << 20) < args.size {
        return Err(BenchError::Args(
            "--map-mib must hold at least one body".into(),
        ));
    }
    let modes: Vec<Mode> = if args.mode.is_empty() {
        Mode::ALL.to_vec()
    } else {
        args.mode.clone()
    };
    let map = Arc::new(make_map(&args.dir, args.map_mib)?);

    if !args.json {
        println!(
            "size {} B, count {}, map {} MiB, sender cpu {}, receiver cpu {}",
            args.size, args.count, args.map_mib, args.sender_cpu, args.receiver_cpu
        );
        println!(
            "{:<8} {:<14} {:>9} {:>10} {:>12} {:>12} {:>12} {:>7}",
            "round",
            "mode",
            "MiB/s",
            "sends/s",
            "send us/MiB",
            "recv us/MiB",
            "proc us/MiB",
            "copied"
        );
    }
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..args.rounds {
        // Alternate the order so no mode always runs first (cold) or last.
        let order: Vec<Mode> = if round % 2 == 0 {
            modes.clone()
        } else {
            modes.iter().rev().copied().collect()
        };
        for mode in order {
            let result = run_one(args, &map, mode)?;
            if args.json {
                json_line(args, "round", mode, Some(round), &result);
            } else {
                table_row(&round.to_string(), mode, &result);
            }
            io::stdout().flush().map_err(io_err("stdout"))?;
            runs.push(Run {
                mode,
                round,
                result,
            });
        }
    }
    if args.rounds > 1 {
        for &mode in &modes {
            let ok: Vec<Figures> = runs
                .iter()
                .filter(|r| r.mode == mode)
                .filter_map(|r| r.result.as_ref().ok().copied())
                .collect();
            let result = if ok.is_empty() {
                runs.iter()
                    .find(|r| r.mode == mode)
                    .map_or(Err("no round ran".to_string()), |r| {
                        Err(format!(
                            "round {}: {}",
                            r.round,
                            r.result.as_ref().err().map_or("", |s| s)
                        ))
                    })
            } else {
                let med = |f: fn(&Figures) -> f64| median(ok.iter().map(f).collect());
                let first = ok[0];
                Ok(Figures {
                    secs: med(|f| f.secs),
                    mib_per_s: med(|f| f.mib_per_s),
                    sends_per_s: med(|f| f.sends_per_s),
                    sender_us_per_mib: med(|f| f.sender_us_per_mib),
                    receiver_us_per_mib: med(|f| f.receiver_us_per_mib),
                    process_us_per_mib: med(|f| f.process_us_per_mib),
                    sender_user_us: med(|f| f.sender_user_us as f64) as u64,
                    sender_sys_us: med(|f| f.sender_sys_us as f64) as u64,
                    send_calls: med(|f| f.send_calls as f64) as u64,
                    // Summed, not medians: the copied fraction over all rounds.
                    zc_completed: ok.iter().map(|f| f.zc_completed).sum(),
                    zc_copied: ok.iter().map(|f| f.zc_copied).sum(),
                    ..first
                })
            };
            if args.json {
                json_line(args, "median", mode, None, &result);
            } else {
                table_row("median", mode, &result);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("volley-send-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
