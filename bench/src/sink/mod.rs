//! `volley-bench sink`: a minimal, fast SMTP server that accepts (or fails, on request) every
//! transaction and discards the body. Its fault modes ([`faults`]) make it a hostile receiver.
//!
//! One pinned executor per core, each with its own SO_REUSEPORT listener. The connection
//! concurrency limit per source IP (`--max-connections-per-ip`) is counted **per core**: with N
//! cores a source may hold up to N times the limit in the worst case.

pub mod faults;
pub mod message_log;
pub mod provider;
pub mod session;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorPoolBuilder, spawn_local};

use crate::counters::{CoreCounters, Counters, spawn_reporter};
use crate::placement::CorePlan;
use faults::{ConnectionFault, Faults, Stage};
use message_log::{LoggedMessage, MessageLog};
use provider::{AfterReply, Provider, ReplyFacts};
use session::{Session, Step, Verdict};

/// Bytes read from a socket at once.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// How often each core writes its buffered log lines.
pub const LOG_FLUSH_INTERVAL_MS: u64 = 100;
/// A client silent this long is dropped; also how long a fault mode holds a connection it
/// stopped answering (tarpit, stalled TLS, stopped reading) when the client does not close it.
pub const IDLE_TIMEOUT_S: u64 = 300;
/// Receive buffer of a connection that stops reading in DATA, so that its sender blocks soon.
pub const STOPPED_READER_RCVBUF_BYTES: usize = 4096;

/// What the sink was asked to do.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Address to listen on (port 0 picks one; it is printed as `listening on ADDR`).
    pub listen: SocketAddr,
    /// Where to log accepted messages, one JSON line each.
    pub log: Option<PathBuf>,
    /// Fault modes and failure percentages (all off by default).
    pub faults: Faults,
    /// Delay before the end-of-data reply.
    pub delay: Duration,
    /// Executors and their CPUs.
    pub plan: CorePlan,
    /// Concurrent connections allowed per source IP and core; 0 = unlimited.
    pub max_connections_per_ip: u32,
    /// Live stats period on stderr; zero = off.
    pub stats_interval: Duration,
    /// Answer messages to provider domains (gmail.test, ...) with provider-style texts.
    pub provider_replies: bool,
    /// Clients refused at the greeting with `554 5.7.1` (a blocklisted sending IP).
    pub refuse_from: Vec<IpAddr>,
    /// Clients whose every recipient is refused with `554 5.7.1` (blocklisted, Postfix style).
    pub block_rcpt_from: Vec<IpAddr>,
    /// With a certificate (`--tls-cert`, `--tls-key`): STARTTLS offered in EHLO.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// How long a STARTTLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT_S: u64 = 30;

/// The server configuration of `--tls-cert` (PEM chain) and `--tls-key` (PEM private key).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let named = |path: &std::path::Path, e: &dyn std::fmt::Display| {
        io::Error::other(format!("{}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| named(cert, &e))?;
    if chain.is_empty() {
        return Err(named(cert, &"no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| named(key, &e))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(io::Error::other)
}

/// Per-core state shared by that core's connections.
struct CoreContext {
    config: Arc<SinkConfig>,
    counters: Arc<Counters>,
    index: usize,
    cores: usize,
    log: Option<RefCell<MessageLog>>,
    connections_per_ip: RefCell<HashMap<IpAddr, u32>>,
    next_connection_seq: Cell<u64>,
}

impl CoreContext {
    fn counters(&self) -> &CoreCounters {
        self.counters.core(self.index)
    }

    /// Unique per process: core index + cores * per-core sequence.
    fn new_connection_id(&self) -> u64 {
        let seq = self.next_connection_seq.get();
        self.next_connection_seq.set(seq + 1);
        self.index as u64 + self.cores as u64 * seq
    }

    fn verdict(&self) -> Verdict {
        self.config
            .faults
            .verdict(Stage::EndOfData, fastrand::f64() * 100.0)
    }
}

/// Holds one of a source IP's connection slots on this core; frees it on drop.
struct IpSlot {
    ctx: Rc<CoreContext>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(ctx: &Rc<CoreContext>, ip: IpAddr) -> Option<IpSlot> {
        let limit = ctx.config.max_connections_per_ip;
        let mut map = ctx.connections_per_ip.borrow_mut();
        let count = map.entry(ip).or_insert(0);
        if limit > 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            ctx: ctx.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.ctx.connections_per_ip.borrow_mut();
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Runs the sink until SIGTERM/SIGINT; flushes logs and returns.
pub fn run(config: SinkConfig) -> io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    if let Some(path) = &config.log {
        // Fail early, before any executor starts, if the log cannot be opened.
        MessageLog::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    let cores = config.plan.cores;
    let counters = Counters::new(cores);
    let reporter_stop = Arc::new(AtomicBool::new(false));
    let reporter = (!config.stats_interval.is_zero()).then(|| {
        spawn_reporter(
            counters.clone(),
            config.stats_interval,
            reporter_stop.clone(),
            |now, before, _, interval| {
                let rate = (now.messages - before.messages) as f64 / interval.as_secs_f64();
                format!(
                    "sink: {rate:.0} msg/s, {} messages ({} accepted), {} connections open, {} total",
                    now.messages,
                    now.accepted,
                    now.connections_opened - now.connections_closed,
                    now.connections_opened
                )
            },
        )
    });
    let config = Arc::new(config);
    let next_index = Arc::new(AtomicUsize::new(0));
    let bound_cores = Arc::new(AtomicUsize::new(0));
    let bound_addr = Arc::new(OnceLock::new());
    let handles = LocalExecutorPoolBuilder::new(config.plan.placement()?)
        .name("volley-sink")
        .on_all_shards(move || {
            let index = next_index.fetch_add(1, Ordering::SeqCst);
            shard(ShardStart {
                index,
                cores,
                config,
                counters,
                stop,
                bound_cores,
                bound_addr,
            })
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut result = Ok(());
    for joined in handles.join_all() {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(io::Error::other(e.to_string())),
        }
    }
    reporter_stop.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    result
}

struct ShardStart {
    index: usize,
    cores: usize,
    config: Arc<SinkConfig>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    bound_cores: Arc<AtomicUsize>,
    bound_addr: Arc<OnceLock<SocketAddr>>,
}

async fn shard(start: ShardStart) -> io::Result<()> {
    // Core 0 binds first so that port 0 resolves to one port that every core then shares.
    let addr = if start.index == 0 {
        start.config.listen
    } else {
        loop {
            if let Some(addr) = start.bound_addr.get() {
                break *addr;
            }
            if start.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    };
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            start.stop.store(true, Ordering::Relaxed);
            return Err(io::Error::other(format!("cannot listen on {addr}: {e}")));
        }
    };
    let local = listener.local_addr()?;
    if start.index == 0 {
        let _ = start.bound_addr.set(local);
    }
    if start.bound_cores.fetch_add(1, Ordering::SeqCst) + 1 == start.cores {
        eprintln!("listening on {local}");
    }
    let log = match &start.config.log {
        Some(path) => Some(RefCell::new(MessageLog::open(path)?)),
        None => None,
    };
    let ctx = Rc::new(CoreContext {
        config: start.config.clone(),
        counters: start.counters.clone(),
        index: start.index,
        cores: start.cores,
        log,
        connections_per_ip: RefCell::new(HashMap::new()),
        next_connection_seq: Cell::new(0),
    });
    spawn_local(accept_loop(listener, ctx.clone())).detach();
    // The ticker: flush the log regularly; on a signal flush once more and end this executor
    // (returning from the main future stops it, dropping the connection tasks).
    loop {
        glommio::timer::sleep(Duration::from_millis(LOG_FLUSH_INTERVAL_MS)).await;
        let stopping = start.stop.load(Ordering::Relaxed);
        if let Some(log) = &ctx.log
            && let Err(e) = log.borrow_mut().flush()
        {
            eprintln!("sink: cannot write the message log: {e}");
        }
        if stopping {
            return Ok(());
        }
    }
}

async fn accept_loop(listener: TcpListener, ctx: Rc<CoreContext>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                spawn_local(serve(stream, ctx.clone())).detach();
            }
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                eprintln!("sink: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(mut stream: TcpStream, ctx: Rc<CoreContext>) {
    let peer_ip = stream
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    if ctx.config.refuse_from.contains(&peer_ip) {
        let greeting =
            format!("554 5.7.1 Service unavailable; client host [{peer_ip}] blocked\r\n");
        let _ = stream.write_all(greeting.as_bytes()).await;
        return;
    }
    let Some(_slot) = IpSlot::take(&ctx, peer_ip) else {
        let _ = stream
            .write_all(b"421 4.7.0 Too many connections from your IP\r\n")
            .await;
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(IDLE_TIMEOUT_S)));
    CoreCounters::bump(&ctx.counters().connections_opened);
    let fault = ctx.config.faults.connection_fault(fastrand::f64() * 100.0);
    match fault {
        ConnectionFault::Tarpit => swallow_until_closed(&mut stream).await,
        ConnectionFault::Greeting421 => {
            let _ = stream
                .write_all(faults::greeting_421(fastrand::bool()))
                .await;
        }
        _ => {
            if fault == ConnectionFault::StopReadingInData {
                // A small window makes the sender block within kilobytes, not megabytes.
                let _ = with_socket(stream.as_raw_fd(), |s| {
                    s.set_recv_buffer_size(STOPPED_READER_RCVBUF_BYTES)
                });
            }
            let connection_id = ctx.new_connection_id();
            let session = new_session(&ctx, peer_ip, fault);
            let fd = stream.as_raw_fd();
            let link = Link {
                ctx: &ctx,
                peer_ip,
                connection_id,
                fault,
                fd,
            };
            if let Ok(Ended::StartTls(session)) = converse(&mut stream, &link, session, true).await
            {
                start_tls(stream, &link, *session).await;
            }
        }
    }
    CoreCounters::bump(&ctx.counters().connections_closed);
}

/// What one connection is, for `converse`.
struct Link<'a> {
    ctx: &'a CoreContext,
    peer_ip: IpAddr,
    connection_id: u64,
    fault: ConnectionFault,
    /// The socket, for the options glommio does not offer (a reset).
    fd: RawFd,
}

fn new_session(ctx: &CoreContext, peer_ip: IpAddr, fault: ConnectionFault) -> Session {
    let mut session = Session::new(ctx.log.is_some() || ctx.config.provider_replies);
    if ctx.config.block_rcpt_from.contains(&peer_ip) {
        session.block_recipients();
    }
    if fault == ConnectionFault::StallTls {
        session.offer_stalling_starttls();
    } else if ctx.config.tls.is_some() {
        session.offer_starttls();
    }
    if ctx.config.faults.fails_before_end_of_data() {
        session.fail_stages(ctx.config.faults.clone(), fastrand::Rng::new());
    }
    session
}

/// After a 220 to STARTTLS: the handshake, then the session again over TLS; or, in the
/// `--stall-tls` fault mode, silence.
async fn start_tls(mut stream: TcpStream, link: &Link<'_>, mut session: Session) {
    let Some(config) = link
        .ctx
        .config
        .tls
        .clone()
        .filter(|_| link.fault != ConnectionFault::StallTls)
    else {
        swallow_until_closed(&mut stream).await;
        return;
    };
    let handshake = futures_rustls::TlsAcceptor::from(config).accept(stream);
    let limit = Duration::from_secs(TLS_HANDSHAKE_TIMEOUT_S);
    let Ok(Ok(mut secured)) = glommio::timer::timeout(limit, async { Ok(handshake.await) }).await
    else {
        return;
    };
    session.tls_established();
    let _ = converse(&mut secured, link, session, false).await;
}

/// How `converse` ended.
enum Ended {
    Closed,
    /// STARTTLS was answered 220: the handshake comes next (input after it was dropped).
    StartTls(Box<Session>),
}

/// Runs `f` on the socket `fd` of a glommio stream, for options glommio does not offer.
fn with_socket<R>(fd: RawFd, f: impl FnOnce(socket2::SockRef<'_>) -> R) -> R {
    // SAFETY: the descriptor belongs to a stream that the caller holds for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    f(socket2::SockRef::from(&fd))
}

/// Reads and discards until the client closes or is idle for [`IDLE_TIMEOUT_S`]; answers nothing.
async fn swallow_until_closed<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Aborts the connection with a TCP RST (`--reset-percent`).
fn reset(fd: RawFd) {
    // Linger 0: the close that follows sends RST instead of FIN.
    let _ = with_socket(fd, |s| s.set_linger(Some(Duration::ZERO)));
}

/// Writes the pending replies, first waiting `--slow-reply-ms` if set.
async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    slow: Duration,
) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    if !slow.is_zero() {
        glommio::timer::sleep(slow).await;
    }
    stream.write_all(out).await?;
    stream.flush().await?;
    out.clear();
    Ok(())
}

/// Whether the transaction whose body is being read is to be reset, drawn once per body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFate {
    NotInBody,
    Keep,
    Reset,
}

/// Reads, feeds the session, and writes every reply of a batch in one write; the greeting first
/// when `greet` (not after STARTTLS).
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    link: &Link<'_>,
    mut session: Session,
    greet: bool,
) -> io::Result<Ended> {
    let (ctx, peer_ip, connection_id, fault) =
        (link.ctx, link.peer_ip, link.connection_id, link.fault);
    let faults = &ctx.config.faults;
    let slow = faults.slow_reply;
    let mut body_fate = BodyFate::NotInBody;
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(4096);
    if greet {
        out.extend_from_slice(Session::greeting());
    }
    loop {
        loop {
            let progress = session.advance(buf.get(start..end).unwrap_or_default(), &mut out);
            start += progress.consumed;
            if session.in_body() || progress.step == Step::MessageReceived {
                if body_fate == BodyFate::NotInBody {
                    body_fate = if faults.resets(fastrand::f64() * 100.0) {
                        BodyFate::Reset
                    } else {
                        BodyFate::Keep
                    };
                }
            } else {
                body_fate = BodyFate::NotInBody;
            }
            if fault == ConnectionFault::StopReadingInData
                && (session.in_body() || progress.step == Step::MessageReceived)
            {
                // Answer what came before the body, then never read again nor answer: the
                // sender's writes fill the window and block, or it waits for a reply for ever.
                // A small pipelined BDAT may already be read whole; it is never answered either.
                flush(stream, &mut out, slow).await?;
                glommio::timer::sleep(Duration::from_secs(IDLE_TIMEOUT_S)).await;
                return Ok(Ended::Closed);
            }
            // Reset once some of the body arrived (or all of it, before its reply).
            if body_fate == BodyFate::Reset
                && (session.message_bytes() > 0 || progress.step == Step::MessageReceived)
            {
                flush(stream, &mut out, slow).await?;
                reset(link.fd);
                return Ok(Ended::Closed);
            }
            match progress.step {
                Step::NeedInput => break,
                Step::Close => {
                    flush(stream, &mut out, slow).await?;
                    return Ok(Ended::Closed);
                }
                Step::StartTls => {
                    flush(stream, &mut out, slow).await?;
                    return Ok(Ended::StartTls(Box::new(session)));
                }
                Step::MessageReceived => {
                    body_fate = BodyFate::NotInBody;
                    let verdict = ctx.verdict();
                    if !ctx.config.delay.is_zero() {
                        flush(stream, &mut out, slow).await?;
                        glommio::timer::sleep(ctx.config.delay).await;
                    }
                    let counters = ctx.counters();
                    CoreCounters::bump(&counters.messages);
                    if verdict == Verdict::Accept {
                        CoreCounters::bump(&counters.accepted);
                        if let Some(log) = &ctx.log {
                            let logged = LoggedMessage {
                                peer_ip,
                                ehlo: session.ehlo(),
                                sender: session.sender().unwrap_or_default(),
                                recipients: session.recipients(),
                                size_bytes: session.message_bytes(),
                                message_id: session.message_id(),
                                connection_id,
                                tls: session.tls(),
                                requiretls: session.requiretls(),
                            };
                            log.borrow_mut().append(&logged)?;
                        }
                    }
                    let provider = if ctx.config.provider_replies {
                        session
                            .recipients()
                            .first()
                            .and_then(|r| Provider::of_address(r))
                    } else {
                        None
                    };
                    match provider {
                        Some(provider) => {
                            let facts = ReplyFacts {
                                peer_ip,
                                unix_s: u64::try_from(crate::clock::unix_millis_now() / 1000)
                                    .unwrap_or(0),
                                serial: fastrand::u64(..),
                                message_bytes: session.message_bytes(),
                                message_id: session.message_id(),
                            };
                            let after = provider.write_reply(verdict, &facts, &mut out);
                            session.message_answered(after == AfterReply::Close);
                        }
                        None => session.reply_to_message(verdict, &mut out),
                    }
                }
            }
        }
        flush(stream, &mut out, slow).await?;
        if start == end {
            start = 0;
            end = 0;
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = stream.read(buf.get_mut(end..).unwrap_or_default()).await?;
        if n == 0 {
            return Ok(Ended::Closed);
        }
        end += n;
    }
}
