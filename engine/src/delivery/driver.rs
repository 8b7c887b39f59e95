//! The I/O driver of one outbound connection: moves bytes between the socket and the sans-IO
//! `smtp::client::Session`, runs the STARTTLS handshake, and hands the session's events to the
//! connection's transaction bookkeeping (`transaction::Connection`).

use std::io;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;

use super::hops::Hop;
use super::transaction::Connection;
use crate::config::OutboundTls;
use crate::smtp::client::{Event, Reply, Session, Transmit, dot_stuff};

const READ_CHUNK_BYTES: usize = 16 * 1024;

enum Next {
    Closed,
    StartTls(Box<Session>),
}

pub async fn converse(
    stream: glommio::net::TcpStream,
    session: Session,
    conn: &mut Connection,
    hop: &Hop,
    tls: OutboundTls,
) -> io::Result<()> {
    let mut plain = stream;
    let session = match drive(&mut plain, session, conn).await? {
        Next::Closed => return Ok(()),
        Next::StartTls(s) => *s,
    };
    let client_tls = conn.core.client_tls();
    let config = match tls {
        OutboundTls::Required => client_tls.verified.clone(),
        _ => client_tls.opportunistic.clone(),
    };
    let name = ServerName::try_from(hop.host.clone())
        .unwrap_or_else(|_| ServerName::IpAddress(hop.address.ip().into()));
    let mut secured = match TlsConnector::from(config).connect(name, plain).await {
        Ok(s) => s,
        Err(e) => {
            conn.failure = Some(Reply::local(
                451,
                (4, 7, 5),
                format!("TLS handshake with {} failed: {e}", hop.host),
            ));
            return Ok(());
        }
    };
    let mut session = session;
    session.tls_established();
    match drive(&mut secured, session, conn).await? {
        Next::Closed | Next::StartTls(_) => Ok(()),
    }
}

async fn drive<S>(io: &mut S, mut session: Session, conn: &mut Connection) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut out = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        let mut start_tls = false;
        let mut progressed = false;
        while let Some(event) = session.poll_event() {
            progressed = true;
            match event {
                Event::NeedTls => start_tls = true,
                Event::Ready => conn.on_ready(&mut session).await,
                Event::TransactionDone { recipient_results } => {
                    conn.on_done(recipient_results).await
                }
                Event::Failed { reply, temporary } => {
                    log::info!(
                        "{}: {} failed ({}): {reply}",
                        conn.key,
                        conn.mx,
                        if temporary { "temporary" } else { "permanent" }
                    );
                    super::shaping::observe_failure(&conn.core, &conn.key, &reply);
                    conn.failure = Some(reply);
                }
                Event::Closed => {
                    flush_transmits(io, &mut session, conn, &mut out).await?;
                    return Ok(Next::Closed);
                }
            }
        }
        flush_transmits(io, &mut session, conn, &mut out).await?;
        if start_tls {
            return Ok(Next::StartTls(Box::new(session)));
        }
        if progressed {
            // Answering an event (send, quit) may have produced new events.
            continue;
        }
        let timeout = session.timeout();
        let read = futures_lite::future::or(async { Some(io.read(&mut buf).await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        match read {
            None => session.on_timeout(),
            Some(Ok(0)) | Some(Err(_)) => session.connection_lost(),
            Some(Ok(n)) => session.handle_input(&buf[..n]),
        }
    }
}

async fn flush_transmits<S: AsyncWrite + Unpin>(
    io: &mut S,
    session: &mut Session,
    conn: &Connection,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    while let Some(t) = session.poll_transmit() {
        match t {
            Transmit::Bytes(bytes) => out.extend_from_slice(&bytes),
            Transmit::Body => {
                if let Some(flight) = &conn.in_flight {
                    dot_stuff(&flight.body, out);
                }
            }
            Transmit::RawBody => {
                if let Some(flight) = &conn.in_flight {
                    out.extend_from_slice(&flight.body);
                }
            }
        }
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        io.flush().await?;
        out.clear();
    }
    Ok(())
}
