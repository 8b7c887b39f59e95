//! The driver of one inbound connection: it moves bytes between the socket and the sans-IO
//! `smtp::server::Session`, answers the session's events (AUTH checks, MAIL admission, spooling),
//! upgrades to TLS, and enforces the deadlines and the graceful stop.
//!
//! Every I/O step has a deadline: the session's own (a whole command, a whole body: it says when
//! through `poll_timeout`), and the driver's for its steps, the TLS handshake (`tls_timeout_ms`) and
//! each write (`write_timeout_ms`). A stage that times out ends the connection and the log line
//! names it; the session's stages first get `421 4.4.2 <hostname> <stage> timeout`.
//!
//! On a `proxy_protocol` listener the PROXY header is taken first, within `proxy_timeout_ms` and
//! only from `trusted_proxies`, before the connection is counted or greeted; from then on the
//! client it names is the peer for everything (connection caps, relay networks, AUTH throttling,
//! logs, the trace line).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use super::body_budget::BodyBudget;
use super::prefixed::Prefixed;
use super::proxy_header::{self, Malformed, Parse};
use super::{ListenerContext, LiveSettings};
use crate::auth::ThrottleVerdict;
use crate::shard::ConnectionRefusal;
use crate::smtp::reply::{EnhancedCode, Reply};
use crate::smtp::server::{Event, PeerInfo, Session, message_bytes_in_flight_refusal};

/// Bytes read from the socket at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// How often an idle session looks at the stop flag (and the drain).
const STOP_CHECK_MS: u64 = 500;
/// The answer while the node drains: at connect, and between transactions of open sessions.
const DRAINING_REPLY: &[u8] =
    b"421 4.3.2 Service not available: this node is draining, try another\r\n";

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum DriverError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{stage} timeout after {} ms", .after.as_millis())]
    Timeout {
        stage: &'static str,
        after: Duration,
    },
}

/// Why a connection on a `proxy_protocol` listener is closed before the greeting.
#[derive(Debug, thiserror::Error)]
enum ProxyRejection {
    #[error("not in trusted_proxies")]
    Untrusted,
    #[error("{0}")]
    Malformed(#[from] Malformed),
    #[error("closed before a whole PROXY header")]
    Closed,
    #[error("no whole PROXY header within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(io::Error),
}

/// Octets read at once while looking for a PROXY header: the header and, at most, this much of
/// what follows it.
const PROXY_READ_BYTES: usize = 512;

/// How one exchange with the session ended.
enum SessionEnd {
    Close,
    StartTls,
}

/// Runs `step` for at most `limit`; past it, the step is dropped and `stage` named in the error.
async fn within<T>(
    stage: &'static str,
    limit: Duration,
    step: impl Future<Output = io::Result<T>>,
) -> Result<T, DriverError> {
    futures_lite::future::or(async { step.await.map_err(DriverError::Io) }, async {
        glommio::timer::sleep(limit).await;
        Err(DriverError::Timeout {
            stage,
            after: limit,
        })
    })
    .await
}

/// Writes `bytes` to the client, flushed, within the write deadline.
async fn write_within<S: AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), DriverError> {
    within("write", limit, async {
        io.write_all(bytes).await?;
        io.flush().await
    })
    .await
}

/// Serves one accepted connection to its end.
pub async fn serve_connection(stream: TcpStream, ctx: Rc<ListenerContext>) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let core = &ctx.core;
    let settings = ctx.settings();
    let counters = core.counters();
    // `peer` from here on is the client: the one a trusted proxy names, or the socket's peer.
    let (stream, peer) = if settings.listener.proxy_protocol {
        match take_proxy_header(stream, peer, &settings).await {
            Ok(taken) => taken,
            Err(rejection) => {
                counters
                    .proxy_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match rejection {
                    ProxyRejection::Malformed(_) => {
                        log::warn!("proxy {peer}: closed without greeting: {rejection}")
                    }
                    _ => log::info!("proxy {peer}: closed without greeting: {rejection}"),
                }
                return;
            }
        }
    } else {
        (Prefixed::new(Vec::new(), stream), peer)
    };
    let config = core.config();
    let admitted = core.node.control.admit(
        peer.ip(),
        config.server.max_connections,
        config.server.max_connections_per_ip,
    );
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(refusal) => {
            counters
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let text = match refusal {
                ConnectionRefusal::TooManyTotal => {
                    "421 4.7.0 Too many connections, try again later\r\n"
                }
                ConnectionRefusal::TooManyFromIp => {
                    "421 4.7.0 Too many connections from your address, try again later\r\n"
                }
            };
            log::info!("refused {peer}: {}", text.trim_end());
            let mut stream = stream;
            let _ = write_within(&mut stream, text.as_bytes(), settings.write_timeout).await;
            return;
        }
    };
    if core.node.drain.is_draining() {
        // The node hands its queue to another: new mail goes elsewhere (another MX, HAProxy's
        // next server). Counted as refused, like a connection limit.
        counters
            .connections_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log::info!("refused {peer}: draining");
        let mut stream = stream;
        let _ = write_within(&mut stream, DRAINING_REPLY, settings.write_timeout).await;
        return;
    }
    counters
        .connections_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match run(stream, peer, &ctx, &settings).await {
        Ok(()) => {}
        Err(DriverError::Io(e)) => log::debug!("session {peer}: {e}"),
        Err(e @ DriverError::Timeout { .. }) => log::info!("session {peer}: {e}, closing"),
    }
}

/// Reads the PROXY header of a connection from `peer`, within the listener's deadline: the
/// client it names (the peer itself for a LOCAL or UNKNOWN header), and the stream with what
/// followed the header put back in front.
async fn take_proxy_header(
    mut stream: TcpStream,
    peer: SocketAddr,
    settings: &LiveSettings,
) -> Result<(Prefixed<TcpStream>, SocketAddr), ProxyRejection> {
    let trusted = &settings.listener.trusted_proxies;
    if !trusted.iter().any(|n| n.contains(peer.ip())) {
        return Err(ProxyRejection::Untrusted);
    }
    // At most `HEADER_BYTES_MAX` + `PROXY_READ_BYTES` octets: `parse` decides within the first.
    let mut got = Vec::with_capacity(PROXY_READ_BYTES);
    let mut chunk = [0u8; PROXY_READ_BYTES];
    let read = within("proxy", settings.proxy_timeout, async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got.extend_from_slice(&chunk[..n]);
            debug_assert!(got.len() < proxy_header::HEADER_BYTES_MAX + PROXY_READ_BYTES);
            match proxy_header::parse(&got) {
                Parse::NeedMore => {}
                Parse::Proxied { source, length, .. } => return Ok(Ok((source, length))),
                Parse::Local { length } => return Ok(Ok((peer, length))),
                Parse::Malformed(reason) => return Ok(Err(reason)),
            }
        }
    })
    .await;
    let (client, length) = match read {
        Ok(parsed) => parsed?,
        Err(DriverError::Timeout { after, .. }) => return Err(ProxyRejection::Timeout(after)),
        Err(DriverError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(ProxyRejection::Closed);
        }
        Err(DriverError::Io(e)) => return Err(ProxyRejection::Io(e)),
    };
    log::debug!("proxy {peer}: client {client}");
    got.drain(..length);
    Ok((Prefixed::new(got, stream), client))
}

async fn run(
    stream: Prefixed<TcpStream>,
    peer: SocketAddr,
    ctx: &Rc<ListenerContext>,
    settings: &LiveSettings,
) -> Result<(), DriverError> {
    // A peer node (`[cluster] peer_networks`) relays too: handing mail over is relaying it.
    let config = ctx.core.config();
    let peer_node = config
        .cluster
        .as_ref()
        .is_some_and(|c| c.peer_networks.iter().any(|n| n.contains(peer.ip())));
    let relay_allowed = peer_node
        || settings
            .listener
            .relay_networks
            .iter()
            .any(|n| n.contains(peer.ip()));
    let peer_info = PeerInfo {
        ip: peer.ip(),
        relay_allowed,
    };
    let server_config = settings.server.clone();
    if let Some(acceptor) = ctx.implicit_tls() {
        let mut tls = within("tls", settings.tls_timeout, acceptor.accept(stream)).await?;
        let mut session = Session::new(server_config, peer_info, true, Instant::now());
        exchange(&mut tls, &mut session, ctx, settings).await?;
        return Ok(());
    }
    let mut plain = stream;
    let mut session = Session::new(server_config, peer_info, false, Instant::now());
    match exchange(&mut plain, &mut session, ctx, settings).await? {
        SessionEnd::Close => Ok(()),
        SessionEnd::StartTls => {
            let Some(acceptor) = ctx.starttls() else {
                return Ok(());
            };
            // No 421 on a handshake timeout: the client is mid-handshake and cannot read one.
            let mut tls = within("tls", settings.tls_timeout, acceptor.accept(plain)).await?;
            session.tls_established(Instant::now());
            exchange(&mut tls, &mut session, ctx, settings).await?;
            Ok(())
        }
    }
}

enum ReadOutcome {
    Data(usize),
    TimedOut,
}

async fn exchange<S>(
    io: &mut S,
    session: &mut Session,
    ctx: &Rc<ListenerContext>,
    settings: &LiveSettings,
) -> Result<SessionEnd, DriverError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = session.peer().ip;
    // Dropped with this exchange, however it ends: what the session held is given back.
    let mut budget = BodyBudget::new(&ctx.core.node.control, peer);
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut out = Vec::with_capacity(4096);
    loop {
        // Checked before every read: a client that always has an octet ready never reaches
        // the read's own timeout.
        if let Some(stage) = session.handle_timeout(Instant::now()) {
            log::info!(
                "session {peer}: {} timeout, closing with 421 4.4.2",
                stage.name()
            );
        }
        let mut next = None;
        while let Some(event) = session.poll_event() {
            match event {
                Event::StartTls => next = Some(SessionEnd::StartTls),
                Event::Close => next = Some(SessionEnd::Close),
                Event::MessageRefused { reply } => {
                    log::info!("session {peer}: message refused at end of data: {reply}");
                    count_rejected(ctx);
                }
                other => handle_event(other, session, ctx, &mut budget).await,
            }
        }
        // An answer lets the session run on input it had buffered, perhaps into a body.
        budget.settle(
            session,
            ctx.core.config().server.max_message_bytes_in_flight,
        );
        session.take_output(&mut out);
        if !out.is_empty() {
            write_within(io, &out, settings.write_timeout).await?;
            out.clear();
        }
        if let Some(next) = next {
            return Ok(next);
        }
        if session.is_closed() {
            return Ok(SessionEnd::Close);
        }
        let stopping = ctx.core.node.control.stopping();
        if stopping && !session.in_transaction() {
            write_within(
                io,
                b"421 4.3.2 Service shutting down, try again later\r\n",
                settings.write_timeout,
            )
            .await?;
            return Ok(SessionEnd::Close);
        }
        if ctx.core.node.drain.is_draining() && !session.in_transaction() {
            write_within(io, DRAINING_REPLY, settings.write_timeout).await?;
            return Ok(SessionEnd::Close);
        }
        let stop_check = Duration::from_millis(STOP_CHECK_MS);
        let wait = session.poll_timeout().map_or(stop_check, |deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .min(stop_check)
        });
        match read_some(io, &mut buf, wait).await? {
            ReadOutcome::Data(0) => return Ok(SessionEnd::Close),
            ReadOutcome::Data(n) => {
                session.receive(&buf[..n], Instant::now());
                let limit = ctx.core.config().server.max_message_bytes_in_flight;
                budget.settle(session, limit);
            }
            ReadOutcome::TimedOut => {}
        }
    }
}

async fn read_some<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut [u8],
    wait: Duration,
) -> io::Result<ReadOutcome> {
    futures_lite::future::or(async { io.read(buf).await.map(ReadOutcome::Data) }, async {
        glommio::timer::sleep(wait).await;
        Ok(ReadOutcome::TimedOut)
    })
    .await
}

async fn handle_event(
    event: Event,
    session: &mut Session,
    ctx: &Rc<ListenerContext>,
    budget: &mut BodyBudget,
) {
    let core = &ctx.core;
    let in_flight_limit = core.config().server.max_message_bytes_in_flight;
    match event {
        Event::Recipient { address } => {
            let customer = session.authenticated_as().unwrap_or_default();
            let result = if core.suppressions.is_suppressed(customer, &address) {
                crate::intake::record_rejection(
                    core,
                    customer,
                    &address,
                    &Reply::RECIPIENT_SUPPRESSED,
                );
                Err(Reply::RECIPIENT_SUPPRESSED)
            } else {
                Ok(())
            };
            session.rcpt_result(result, Instant::now());
        }
        Event::Auth { username, password } => {
            let ip = session.peer().ip;
            let verdict = core.throttle.borrow_mut().check(ip, crate::clock::unix_s());
            let result = match verdict {
                ThrottleVerdict::Refuse => {
                    log::warn!("AUTH refused for {ip}: too many failures");
                    Err(Reply::new(
                        454,
                        Some(EnhancedCode::new(4, 7, 0)),
                        "Too many authentication failures, try again later",
                    ))
                }
                ThrottleVerdict::Allow | ThrottleVerdict::Delay { .. } => {
                    if let ThrottleVerdict::Delay { delay_ms } = verdict {
                        glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
                    }
                    let credentials = core.credentials();
                    let user = username.clone();
                    // argon2 costs tens of milliseconds: never on the reactor thread.
                    let ok = glommio::executor()
                        .spawn_blocking(move || credentials.verify(&user, &password))
                        .await;
                    if ok {
                        core.throttle.borrow_mut().record_success(ip);
                        log::info!("AUTH {username} from {ip}: ok");
                        Ok(username)
                    } else {
                        core.throttle
                            .borrow_mut()
                            .record_failure(ip, crate::clock::unix_s());
                        log::warn!("AUTH {username} from {ip}: failed");
                        Err(Reply::new(
                            535,
                            Some(EnhancedCode::new(5, 7, 8)),
                            "Authentication credentials invalid",
                        ))
                    }
                }
            };
            session.auth_result(result, Instant::now());
        }
        Event::Mail { sender: _, size } => {
            let size = size.unwrap_or(0);
            let room = core.spool.has_room(size);
            let result = if !budget.size_fits(size, in_flight_limit) {
                log::info!(
                    "session {}: MAIL SIZE={size} refused: over the message bytes in flight",
                    session.peer().ip
                );
                Err(message_bytes_in_flight_refusal())
            } else if room {
                crate::intake::admit_sender(&core.shard, session.authenticated_as())
                    .map_err(|refusal| refusal.smtp_reply())
            } else {
                Err(Reply::new(
                    452,
                    Some(EnhancedCode::new(4, 3, 1)),
                    "Insufficient system storage, try again later",
                ))
            };
            session.mail_result(result, Instant::now());
        }
        Event::Message { envelope, body } => {
            if !budget.hold_handed_over(body.capacity(), session.body_bytes_held(), in_flight_limit)
            {
                drop(body);
                count_rejected(ctx);
                session.message_result(Err(message_bytes_in_flight_refusal()), Instant::now());
                budget.settle(session, in_flight_limit);
                return;
            }
            let origin = crate::intake::Origin::Smtp {
                helo: session.helo_name().unwrap_or("unknown"),
                ip: session.peer().ip,
                protocol: session.protocol(),
                authenticated: session.authenticated_as(),
                relay_trusted: session.peer().relay_allowed,
            };
            let ip = session.peer().ip;
            let result = crate::intake::accept(&core.placement, origin, envelope, body)
                .await
                .map(|accepted| accepted.id.to_string())
                .map_err(|refusal| refusal.smtp_reply());
            if let Err(reply) = &result {
                log::info!("session {ip}: message refused at end of data: {reply}");
                count_rejected(ctx);
            }
            session.message_result(result, Instant::now());
            // The body is spooled or refused, and freed: its share goes back.
            budget.settle(session, in_flight_limit);
        }
        Event::StartTls | Event::Close | Event::MessageRefused { .. } => {}
    }
}

/// `volley_messages_rejected_total`: a message refused at the end of its data, by the session's
/// body rules or by reception (limits, spool).
fn count_rejected(ctx: &ListenerContext) {
    ctx.core
        .counters()
        .messages_rejected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
