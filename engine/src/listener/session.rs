//! The driver of one inbound connection: it moves bytes between the socket and the sans-IO
//! `smtp::server::Session`, answers the session's events (AUTH checks, MAIL admission, spooling),
//! upgrades to TLS, and enforces timeouts and the graceful stop.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;

use super::ListenerContext;
use super::reception::{Origin, accept_message};
use crate::auth::ThrottleVerdict;
use crate::runtime::ConnectionRefusal;
use crate::smtp::reply::{EnhancedCode, Reply};
use crate::smtp::server::{Event, PeerInfo, Session};

/// Bytes read from the socket at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// How often an idle session looks at the stop flag.
const STOP_CHECK_MS: u64 = 500;

enum SessionEnd {
    Close,
    StartTls,
}

/// Serves one accepted connection to its end.
pub async fn serve_connection(stream: TcpStream, ctx: Rc<ListenerContext>) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let core = &ctx.core;
    let config = core.config();
    let admitted = core.shared.control.admit(
        peer.ip(),
        config.server.max_connections,
        config.server.max_connections_per_ip,
    );
    let counters = core.counters();
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
            let _ = stream.write_all(text.as_bytes()).await;
            return;
        }
    };
    counters
        .connections_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    if let Err(e) = run(stream, peer, &ctx).await {
        log::debug!("session {peer}: {e}");
    }
}

async fn run(stream: TcpStream, peer: SocketAddr, ctx: &Rc<ListenerContext>) -> io::Result<()> {
    let relay_allowed = ctx
        .listener
        .relay_networks
        .iter()
        .any(|n| n.contains(peer.ip()));
    let peer_info = PeerInfo {
        ip: peer.ip(),
        relay_allowed,
    };
    let server_config = ctx.server_config();
    if let Some(acceptor) = ctx.implicit_tls() {
        let mut tls = acceptor.accept(stream).await?;
        let mut session = Session::new(server_config, peer_info, true);
        exchange(&mut tls, &mut session, ctx).await?;
        return Ok(());
    }
    let mut plain = stream;
    let mut session = Session::new(server_config, peer_info, false);
    match exchange(&mut plain, &mut session, ctx).await? {
        SessionEnd::Close => Ok(()),
        SessionEnd::StartTls => {
            let Some(acceptor): Option<TlsAcceptor> = ctx.starttls() else {
                return Ok(());
            };
            let mut tls = acceptor.accept(plain).await?;
            session.tls_established();
            exchange(&mut tls, &mut session, ctx).await?;
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
) -> io::Result<SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut out = Vec::with_capacity(4096);
    let mut idle_ms = 0u64;
    loop {
        let mut next = None;
        while let Some(event) = session.poll_event() {
            match event {
                Event::StartTls => next = Some(SessionEnd::StartTls),
                Event::Close => next = Some(SessionEnd::Close),
                other => handle_event(other, session, ctx).await,
            }
        }
        session.take_output(&mut out);
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
        }
        if let Some(next) = next {
            return Ok(next);
        }
        if session.is_closed() {
            return Ok(SessionEnd::Close);
        }
        let stopping = ctx.core.shared.control.stopping();
        if stopping && !session.in_transaction() {
            io.write_all(b"421 4.3.2 Service shutting down, try again later\r\n")
                .await?;
            io.flush().await?;
            return Ok(SessionEnd::Close);
        }
        match read_some(io, &mut buf, STOP_CHECK_MS).await? {
            ReadOutcome::Data(0) => return Ok(SessionEnd::Close),
            ReadOutcome::Data(n) => {
                idle_ms = 0;
                session.receive(&buf[..n]);
            }
            ReadOutcome::TimedOut => {
                idle_ms += STOP_CHECK_MS;
                if idle_ms >= session.timeout().as_millis() as u64 {
                    session.on_timeout();
                }
            }
        }
    }
}

async fn read_some<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut [u8],
    wait_ms: u64,
) -> io::Result<ReadOutcome> {
    futures_lite::future::or(async { io.read(buf).await.map(ReadOutcome::Data) }, async {
        glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
        Ok(ReadOutcome::TimedOut)
    })
    .await
}

async fn handle_event(event: Event, session: &mut Session, ctx: &Rc<ListenerContext>) {
    let core = &ctx.core;
    match event {
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
            session.auth_result(result);
        }
        Event::Mail { sender: _, size } => {
            let room = core.spool.has_room(size.unwrap_or(0));
            let result = if room {
                core.admit_sender(session.authenticated_as())
            } else {
                Err(Reply::new(
                    452,
                    Some(EnhancedCode::new(4, 3, 1)),
                    "Insufficient system storage, try again later",
                ))
            };
            session.mail_result(result);
        }
        Event::Message { envelope, body } => {
            let origin = Origin {
                helo: session.helo_name().unwrap_or("unknown"),
                ip: session.peer().ip,
                protocol: session.protocol(),
                authenticated: session.authenticated_as(),
            };
            let relay_trusted = session.peer().relay_allowed;
            let result = accept_message(core, &origin, envelope, body, relay_trusted).await;
            session.message_result(result);
        }
        Event::StartTls | Event::Close => {}
    }
}
