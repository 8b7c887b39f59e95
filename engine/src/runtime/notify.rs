//! systemd's readiness protocol (`sd_notify`): one datagram of `KEY=VALUE` lines to the unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). It is one
//! `sendto`, so no crate. Only `volley serve` turns it on (`enable_from_env`): a process that
//! embeds the library through the C ABI keeps its own readiness to itself.
//!
//! What is sent: `READY=1` once every core serves (what `/v1/health` calls `serving`),
//! `STOPPING=1` once a stop was requested, and `RELOADING=1` then `READY=1` around a SIGHUP
//! reload. Nothing is sent from a reactor: the main thread watches readiness and stop
//! (`Readiness::observe`), the signal thread reports reloads.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::shard::Control;

/// How long one notification may wait for room in the service manager's socket.
const SEND_TIMEOUT_MS: u64 = 1_000;
/// How often the main thread looks at readiness and stop while it has a notifier.
pub const WATCH_EVERY_MS: u64 = 20;

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// The service manager's socket.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    /// READY=1 went out: a reload's READY=1 may follow it, never precede it.
    ready_sent: AtomicBool,
}

impl Notifier {
    /// The socket named by a `NOTIFY_SOCKET` value: `/path` or `@abstract-name`.
    pub fn connect(value: &OsStr) -> io::Result<Notifier> {
        let bytes = value.as_bytes();
        let address = match bytes.first() {
            Some(b'@') => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..])?
            }
            Some(b'/') => SocketAddr::from_pathname(value)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is neither a path nor an @abstract name",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(Duration::from_millis(SEND_TIMEOUT_MS)))?;
        Ok(Notifier {
            socket,
            address,
            ready_sent: AtomicBool::new(false),
        })
    }

    /// Sends one notification (`KEY=VALUE` lines).
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.address)
            .map(|_| ())
    }

    fn send_logged(&self, state: &str) {
        if let Err(e) = self.send(state) {
            log::warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
        }
    }

    fn ready(&self, cores: u32) {
        self.send_logged(&format!(
            "READY=1\nSTATUS=serving on {cores} cores\nMAINPID={}",
            std::process::id()
        ));
        self.ready_sent.store(true, Ordering::Release);
    }
}

/// Turns notifications on when `$NOTIFY_SOCKET` is set (systemd's `Type=notify`); a bad value is
/// logged and ignored, so a wrong environment never stops the daemon.
pub fn enable_from_env() {
    let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    match Notifier::connect(&value) {
        Ok(notifier) => {
            let _ = NOTIFIER.set(notifier);
        }
        Err(e) => log::warn!("NOTIFY_SOCKET {value:?}: {e}; not notifying systemd"),
    }
}

/// The notifier, when `enable_from_env` found one.
pub fn notifier() -> Option<&'static Notifier> {
    NOTIFIER.get()
}

/// A reload starts: systemd shows the unit as reloading until the next READY=1.
pub fn reloading() {
    if let Some(n) = notifier().filter(|n| n.ready_sent.load(Ordering::Acquire)) {
        n.send_logged(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
    }
}

/// A reload ended (applied or refused): serving again. Before the first READY=1 it says nothing.
pub fn reloaded(cores: u32) {
    if let Some(n) = notifier().filter(|n| n.ready_sent.load(Ordering::Acquire)) {
        n.ready(cores);
    }
}

/// systemd matches RELOADING=1 to the reload it asked for by this clock.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// What the main thread already told the service manager.
#[derive(Default)]
pub struct Readiness {
    ready: bool,
    stopping: bool,
}

impl Readiness {
    /// Sends READY=1 the first time every core serves, and STOPPING=1 the first time a stop was
    /// requested (a stop before readiness sends no READY=1).
    pub fn observe(&mut self, notifier: &Notifier, control: &Control) {
        if !self.stopping && control.stopping() {
            self.stopping = true;
            notifier.send_logged("STOPPING=1\nSTATUS=stopping: finishing transactions in flight");
        } else if !self.ready && !self.stopping && control.all_cores_ready() {
            self.ready = true;
            notifier.ready(control.core_count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    fn received(socket: &UnixDatagram) -> Vec<String> {
        socket.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn path_socket_receives_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.as_os_str()).unwrap();
        n.send("READY=1").unwrap();
        assert_eq!(received(&listener), ["READY=1"]);
    }

    #[test]
    fn abstract_socket_receives_the_state() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("volley-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
        n.send("STOPPING=1").unwrap();
        assert_eq!(received(&listener), ["STOPPING=1"]);
    }

    #[test]
    fn a_value_that_is_no_socket_is_refused() {
        assert!(Notifier::connect(OsStr::new("relative/path")).is_err());
        assert!(Notifier::connect(OsStr::new("")).is_err());
    }

    #[test]
    fn ready_only_once_every_core_serves_then_stopping_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.as_os_str()).unwrap();
        let mut config = crate::config::Config::embedded_default();
        config.server.cores = 2;
        let control = Control::new(Arc::new(config), None);
        let mut readiness = Readiness::default();
        readiness.observe(&n, &control);
        control.cores_ready.fetch_add(1, Ordering::AcqRel);
        readiness.observe(&n, &control);
        assert!(
            received(&listener).is_empty(),
            "one core of two is not ready"
        );
        control.cores_ready.fetch_add(1, Ordering::AcqRel);
        readiness.observe(&n, &control);
        readiness.observe(&n, &control);
        let got = received(&listener);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("READY=1\nSTATUS=serving on 2 cores"),
            "{got:?}"
        );
        control.request_stop();
        readiness.observe(&n, &control);
        readiness.observe(&n, &control);
        let got = received(&listener);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("STOPPING=1"), "{got:?}");
    }

    #[test]
    fn a_stop_before_readiness_sends_no_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.as_os_str()).unwrap();
        let mut config = crate::config::Config::embedded_default();
        config.server.cores = 1;
        let control = Control::new(Arc::new(config), None);
        let mut readiness = Readiness::default();
        control.request_stop();
        readiness.observe(&n, &control);
        control.cores_ready.fetch_add(1, Ordering::AcqRel);
        readiness.observe(&n, &control);
        let got = received(&listener);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("STOPPING=1"), "{got:?}");
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec() >= a + 1_000);
    }
}
