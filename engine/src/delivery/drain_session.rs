//! The I/O driver of one hand-over connection (`drain`): moves bytes between the socket and the
//! sans-IO `smtp::client::Session`, upgrades with STARTTLS when the target offers it, and hands
//! the session's events to the round (`Handover`). The body sent is the `X-Volley-Xfer` line and
//! then the stored message, dot-stuffed for DATA or as stored for `BDAT LAST`. Every wait has a
//! deadline (`drain::DRAIN_DEADLINES`): each read the session's reply timeout, the handshake
//! and each write the driver's own.

use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;

use super::deadlines::{Step, within};
use super::drain::{DRAIN_DEADLINES, Handover};
use super::driver::{WriteFailure, give_back_large, write_all_within, write_stuffed};
use crate::smtp::client::{Event, Reply, Session, Transmit};

const READ_CHUNK_BYTES: usize = 16 * 1024;

enum Next {
    Closed,
    StartTls(Box<Session>),
}

/// Runs the session on `stream` until it closes. A failed TLS handshake, which the session
/// cannot see, is returned; every other failure reaches `handover` as an event.
pub async fn converse(
    stream: glommio::net::TcpStream,
    session: Session,
    handover: &mut Handover,
) -> Result<(), Reply> {
    let mut plain = stream;
    let session = match drive(&mut plain, session, handover).await {
        Next::Closed => return Ok(()),
        Next::StartTls(s) => *s,
    };
    // Opportunistic, as for delivery: the nodes of a platform rarely hold public certificates.
    let config = handover.core.client_tls().opportunistic.clone();
    let name = ServerName::try_from(handover.host.clone())
        .unwrap_or_else(|_| ServerName::IpAddress(handover.address.ip().into()));
    let handshake = TlsConnector::from(config).connect(name, plain);
    let mut secured = match within(Step::Tls.limit(&DRAIN_DEADLINES), handshake).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            return Err(Reply::local(
                451,
                (4, 7, 5),
                format!("TLS handshake with {} failed: {e}", handover.peer),
            ));
        }
        None => return Err(Step::Tls.timeout_reply(&handover.peer)),
    };
    let mut session = session;
    session.tls_established();
    match drive(&mut secured, session, handover).await {
        Next::Closed | Next::StartTls(_) => Ok(()),
    }
}

async fn drive<S>(io: &mut S, mut session: Session, handover: &mut Handover) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write_limit = Step::Write.limit(&DRAIN_DEADLINES);
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut out = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        let mut start_tls = false;
        let mut progressed = false;
        let mut closed = false;
        while let Some(event) = session.poll_event() {
            progressed = true;
            match event {
                Event::NeedTls => start_tls = true,
                Event::Ready => handover.on_ready(&mut session).await,
                // The drain's sessions send one transaction at a time.
                Event::CanPipeline => {}
                Event::TransactionDone { recipient_results } => {
                    handover.on_done(recipient_results).await
                }
                Event::Failed { reply, .. } => {
                    log::info!("drain: {} failed: {reply}", handover.peer);
                    handover.fail(&reply);
                }
                Event::Closed => closed = true,
            }
        }
        if closed {
            return Next::Closed;
        }
        if let Err(failure) =
            flush_transmits(io, &mut session, handover, &mut out, write_limit).await
        {
            out.clear();
            match failure {
                WriteFailure::Timeout => session.fail_io(Step::Write.timeout_text()),
                WriteFailure::Io(e) => {
                    log::debug!("drain: write to {}: {e}", handover.peer);
                    session.connection_lost();
                }
            }
            continue;
        }
        if start_tls {
            return Next::StartTls(Box::new(session));
        }
        if progressed {
            continue;
        }
        match within(session.timeout(), io.read(&mut buf)).await {
            None => session.on_timeout(),
            Some(Ok(0)) | Some(Err(_)) => session.connection_lost(),
            Some(Ok(n)) => session.handle_input(buf.get(..n).unwrap_or_default()),
        }
    }
}

/// Writes what the session has to send.
async fn flush_transmits<S: AsyncWrite + Unpin>(
    io: &mut S,
    session: &mut Session,
    handover: &Handover,
    out: &mut Vec<u8>,
    write_limit: Duration,
) -> Result<(), WriteFailure> {
    while let Some(t) = session.poll_transmit() {
        match t {
            Transmit::Bytes(bytes) => out.extend_from_slice(&bytes),
            Transmit::Body => {
                if let Some(flight) = &handover.in_flight {
                    write_stuffed(io, &[&flight.header, &flight.body], out, write_limit).await?;
                }
            }
            Transmit::RawBody => {
                if let Some(flight) = &handover.in_flight {
                    out.extend_from_slice(&flight.header);
                    out.extend_from_slice(&flight.body);
                }
            }
        }
    }
    if !out.is_empty() {
        write_all_within(io, out, write_limit).await?;
        out.clear();
    }
    give_back_large(out);
    Ok(())
}
