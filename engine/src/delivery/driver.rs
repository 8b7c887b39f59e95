//! The I/O driver of one outbound connection: moves bytes between the socket and the sans-IO
//! `smtp::client::Session`, runs the STARTTLS handshake, and hands the session's events to the
//! connection's transaction bookkeeping (`transaction::Connection`). Every wait has a deadline:
//! each read the session's reply timeout, the handshake and each write the driver's own
//! (`deadlines`); a write or handshake that runs out fails the session with a reply naming it.

use std::io;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;

use super::deadlines::{Step, within};
use super::hops::Hop;
use super::transaction::{Connection, InFlight};
use crate::config::Deadlines;
use crate::smtp::client::{DotStuffer, Event, Reply, Session, Transmit};
use crate::transport_security::plan::HopTls;

const READ_CHUNK_BYTES: usize = 16 * 1024;

enum Next {
    Closed,
    StartTls(Box<Session>),
}

/// Why a write did not complete.
pub(super) enum WriteFailure {
    /// No progress within `write_ms`.
    Timeout,
    Io(io::Error),
}

/// Runs the session on `stream` until it closes. Failures the session sees (a reply, a timeout, a
/// lost connection, a write that ran out) reach `conn` as its events; a failed TLS handshake, which
/// the session cannot see, is returned.
pub async fn converse(
    stream: glommio::net::TcpStream,
    session: Session,
    conn: &mut Connection,
    hop: &Hop,
    tls: &HopTls,
    deadlines: &Deadlines,
) -> Result<(), Reply> {
    let write_limit = Step::Write.limit(deadlines);
    let mut plain = stream;
    let session = match drive(&mut plain, session, conn, write_limit).await {
        Next::Closed => return Ok(()),
        Next::StartTls(s) => *s,
    };
    let client_tls = conn.core.client_tls();
    let (config, observed) = tls.client_config(&client_tls, &hop.host, &conn.key.domain);
    let name = ServerName::try_from(hop.host.clone())
        .unwrap_or_else(|_| ServerName::IpAddress(hop.address.ip().into()));
    let handshake = TlsConnector::from(config).connect(name, plain);
    let mut secured = match within(Step::Tls.limit(deadlines), handshake).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            let under = match tls.session_policy() {
                crate::smtp::client::TlsPolicy::Required => {
                    format!(
                        " (TLS required by {})",
                        tls.required_by(&hop.host, &conn.key.domain)
                    )
                }
                _ => String::new(),
            };
            return Err(Reply::local(
                451,
                (4, 7, 5),
                format!("TLS handshake with {} failed{under}: {e}", conn.mx),
            ));
        }
        None => return Err(Step::Tls.timeout_reply(&conn.mx)),
    };
    conn.tls_up = true;
    conn.tls = tls.verified_by(tls.result_with_tls(observed.as_deref()));
    conn.observed = observed;
    let mut session = session;
    session.tls_established();
    match drive(&mut secured, session, conn, write_limit).await {
        Next::Closed | Next::StartTls(_) => Ok(()),
    }
}

async fn drive<S>(
    io: &mut S,
    mut session: Session,
    conn: &mut Connection,
    write_limit: Duration,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
                Event::Ready => {
                    if !conn.opened {
                        conn.opened = true;
                        super::security::count_open(conn);
                        conn.core
                            .delivery
                            .queues
                            .borrow_mut()
                            .connection_established(&conn.key);
                    }
                    conn.on_ready(&mut session).await
                }
                Event::CanPipeline => conn.try_pipeline(&mut session).await,
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
                    super::backoff_watch::observe_failure(&conn.core, &conn.key, &reply);
                    conn.failure = Some(reply);
                }
                Event::Closed => closed = true,
            }
        }
        if closed {
            return Next::Closed;
        }
        if let Err(failure) = flush_transmits(io, &mut session, conn, &mut out, write_limit).await {
            out.clear();
            match failure {
                WriteFailure::Timeout => session.fail_io(Step::Write.timeout_text()),
                WriteFailure::Io(e) => {
                    log::debug!("{}: write to {}: {e}", conn.key, conn.mx);
                    session.connection_lost();
                }
            }
            continue;
        }
        if start_tls {
            return Next::StartTls(Box::new(session));
        }
        if progressed {
            // Answering an event (send, quit) may have produced new events.
            continue;
        }
        let timeout = session.timeout();
        match within(timeout, io.read(&mut buf)).await {
            None => session.on_timeout(),
            Some(Ok(0)) | Some(Err(_)) => session.connection_lost(),
            Some(Ok(n)) => session.handle_input(buf.get(..n).unwrap_or_default()),
        }
    }
}

/// A body sent as stored (`BDAT LAST`) at least this long is written straight from the spool
/// segment's mapping; a shorter one is copied beside its command, so that both leave in one write
/// (a second syscall costs more than copying a few KiB).
const DIRECT_BODY_MIN_BYTES: usize = 16 << 10;

async fn flush_transmits<S: AsyncWrite + Unpin>(
    io: &mut S,
    session: &mut Session,
    conn: &mut Connection,
    out: &mut Vec<u8>,
    write_limit: Duration,
) -> Result<(), WriteFailure> {
    while let Some(t) = session.poll_transmit() {
        match t {
            Transmit::Bytes(bytes) => out.extend_from_slice(&bytes),
            Transmit::Body => {
                if let Some(flight) = next_body(conn) {
                    write_stuffed(io, &[&flight.body], out, write_limit).await?;
                }
            }
            Transmit::RawBody => {
                if let Some(flight) = next_body(conn) {
                    if flight.body.len() >= DIRECT_BODY_MIN_BYTES {
                        // Written from the segment's mapping: no copy in user space. What was
                        // queued before it (the BDAT command) goes first, in its own write.
                        if !out.is_empty() {
                            write_all_within(io, out, write_limit).await?;
                            out.clear();
                        }
                        write_all_within(io, &flight.body, write_limit).await?;
                    } else {
                        out.extend_from_slice(&flight.body);
                    }
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

/// The transaction whose body the session asks for: the oldest on the wire not sent yet.
fn next_body(conn: &mut Connection) -> Option<&InFlight> {
    let flight = conn.in_flight.iter_mut().find(|f| !f.body_sent)?;
    flight.body_sent = true;
    Some(flight)
}

/// A DATA body is stuffed and written in pieces of this size, so a connection's output buffer
/// stays near `2 * STUFF_PIECE_BYTES` whatever the message size (a 512 KiB message to a slow
/// receiver used to keep a 1 MiB buffer for the connection's life).
const STUFF_PIECE_BYTES: usize = 32 << 10;
/// An output buffer that grew past this (a long command batch, a body of dots) is given back
/// once written.
const OUT_KEEP_BYTES_MAX: usize = 4 * STUFF_PIECE_BYTES;

/// Appends the stuffed form of `parts` (one body, in order) and the end of data to `out`,
/// writing whenever `out` holds a piece's worth: the body is copied once, a piece at a time.
pub(super) async fn write_stuffed<S: AsyncWrite + Unpin>(
    io: &mut S,
    parts: &[&[u8]],
    out: &mut Vec<u8>,
    write_limit: Duration,
) -> Result<(), WriteFailure> {
    let mut stuffer = DotStuffer::new();
    for piece in parts.iter().flat_map(|p| p.chunks(STUFF_PIECE_BYTES)) {
        stuffer.push(piece, out);
        if out.len() >= STUFF_PIECE_BYTES {
            write_all_within(io, out, write_limit).await?;
            out.clear();
        }
    }
    stuffer.finish(out);
    Ok(())
}

/// Replaces an output buffer that grew past `OUT_KEEP_BYTES_MAX` with a small one.
pub(super) fn give_back_large(out: &mut Vec<u8>) {
    if out.capacity() > OUT_KEEP_BYTES_MAX {
        *out = Vec::with_capacity(READ_CHUNK_BYTES);
    }
}

/// Writes `bytes`, each write (and the flush) bounded by `limit`: a server that reads slowly but
/// steadily is waited for; one that stops reading fails after `limit` without progress.
pub(super) async fn write_all_within<S: AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), WriteFailure> {
    let mut written = 0;
    while let Some(rest) = bytes.get(written..).filter(|r| !r.is_empty()) {
        match within(limit, io.write(rest)).await {
            None => return Err(WriteFailure::Timeout),
            Some(Ok(0)) => return Err(WriteFailure::Io(io::ErrorKind::WriteZero.into())),
            Some(Ok(n)) => written += n,
            Some(Err(e)) => return Err(WriteFailure::Io(e)),
        }
    }
    match within(limit, io.flush()).await {
        None => Err(WriteFailure::Timeout),
        Some(Err(e)) => Err(WriteFailure::Io(e)),
        Some(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::dot_stuff;

    /// Every byte written, and the longest single write.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        longest_write: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.bytes.extend_from_slice(buf);
            self.longest_write = self.longest_write.max(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_large_body_is_stuffed_in_pieces_into_a_bounded_buffer() {
        // 1 MiB of lines, a third of which start with a dot, in two parts split mid-line.
        let line = b".dotted line\r\nplain line of text\r\nanother one\r\n";
        let body: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
        let (head, tail) = body.split_at(12_345);
        let mut io = Recorder::default();
        let mut out = b"DATA-ish prefix\r\n".to_vec();
        let limit = Duration::from_secs(1);
        let done = futures_lite::future::block_on(async {
            write_stuffed(&mut io, &[head, tail], &mut out, limit).await?;
            write_all_within(&mut io, &out, limit).await
        });
        assert!(done.is_ok());
        let mut expected = b"DATA-ish prefix\r\n".to_vec();
        dot_stuff(&body, &mut expected);
        assert!(io.bytes == expected, "the pieces are the stuffed body");
        assert!(
            io.longest_write < 3 * STUFF_PIECE_BYTES,
            "{}",
            io.longest_write
        );
        assert!(out.capacity() <= OUT_KEEP_BYTES_MAX, "{}", out.capacity());
    }

    #[test]
    fn a_buffer_that_grew_is_given_back() {
        let mut out = Vec::with_capacity(OUT_KEEP_BYTES_MAX + 1);
        give_back_large(&mut out);
        assert_eq!(out.capacity(), READ_CHUNK_BYTES);
        let mut small = Vec::with_capacity(OUT_KEEP_BYTES_MAX);
        give_back_large(&mut small);
        assert_eq!(small.capacity(), OUT_KEEP_BYTES_MAX);
    }
}
