//! `volley-bench blast`: pipelined SMTP load over reused connections.
//!
//! Connections are spread over the cores (connection k runs on core k % cores); each does EHLO
//! once, then sends messages taken from one pool shared by all connections, or its own fixed
//! share with `--fixed-shares` and `--rate` (`work`). A transaction is one write of
//! `MAIL`+`RCPT`s+`DATA` (RFC 2920 PIPELINING); after the 354 comes the body and `.`. With
//! `--pipeline-depth 2` (the default) the body and `.` are not sent alone: they go in the same
//! write as the next transaction's envelope, which RFC 2920 §3.1 allows (message content may be the
//! first "command" of a group), so a message costs one round trip instead of two.
//!
//! With `--chunking` the body goes as `BDAT <size> LAST` right behind the envelope, so nothing
//! waits for a 354: up to `--pipeline-depth` whole transactions are in flight per connection and
//! one write or read carries many of them. After a refused transaction the next write starts with
//! RSET; transactions already in flight may then fail too (they are counted by their reply).
//!
//! With `--starttls` each connection upgrades to TLS after EHLO (any certificate is accepted: the
//! point is to load the server, not to authenticate it) and says EHLO again; `--auth` then logs
//! in with AUTH PLAIN (RFC 4954) before the first transaction, so submission listeners can be
//! loaded too.

pub mod message;
pub mod reply;
pub mod report;
pub mod tls;
pub mod work;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorPoolBuilder, spawn_local};
use memchr::memmem;

use crate::counters::{CoreCounters, Counters, spawn_reporter};
use crate::placement::CorePlan;
use message::{MessagePlan, write_dot_stuffed};
use reply::ReplyReader;
use report::{Report, Stats, record};
use work::{Pool, Work};

/// Time allowed for a TCP connect.
pub const CONNECT_TIMEOUT_S: u64 = 10;
/// Time allowed for any reply.
pub const REPLY_TIMEOUT_S: u64 = 60;

/// What `blast` was asked to do.
#[derive(Debug, Clone)]
pub struct BlastConfig {
    /// The server.
    pub to: SocketAddr,
    /// Messages to send in total.
    pub messages: u64,
    /// Concurrent connections in total.
    pub connections: usize,
    /// Global pace in messages per second (None = as fast as possible).
    pub rate: Option<f64>,
    /// With `rate`: every connection sends at the same instants (bursts of `connections`
    /// messages) instead of each one offset so that the messages arrive evenly spaced.
    pub rate_bursts: bool,
    /// Each connection sends its own share instead of taking from one pool (always so with
    /// `rate`).
    pub fixed_shares: bool,
    /// EHLO name.
    pub ehlo: String,
    /// DATA: 1 = wait for the end-of-data reply before the next envelope; 2 or more = overlap
    /// them. With `chunking`: transactions in flight per connection.
    pub pipeline_depth: u32,
    /// Send bodies with BDAT (RFC 3030) so whole transactions can be pipelined.
    pub chunking: bool,
    /// Executors and their CPUs.
    pub plan: CorePlan,
    /// How messages look.
    pub message: MessagePlan,
    /// Progress line period on stderr; zero = off.
    pub progress_interval: Duration,
    /// STARTTLS after EHLO with this client configuration.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// AUTH PLAIN with these credentials (only over TLS).
    pub auth: Option<Credentials>,
}

/// A user name and password for AUTH PLAIN.
#[derive(Clone)]
pub struct Credentials {
    /// The authentication identity.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

impl Credentials {
    /// Parses `USER:PASS` (the password may contain colons).
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| "expected USER:PASS".to_string())?;
        if user.is_empty() || password.is_empty() {
            return Err("user and password must not be empty".into());
        }
        Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The AUTH PLAIN initial response (RFC 4616): base64 of `\0user\0password`.
    pub fn plain_response(&self) -> String {
        let raw = format!("\0{}\0{}", self.user, self.password);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

/// Runs the load and returns the report. Errors only if the executors cannot start.
pub fn run(config: BlastConfig) -> io::Result<Report> {
    let cores = config.plan.cores;
    let counters = Counters::new(cores);
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = (!config.progress_interval.is_zero()).then(|| {
        spawn_reporter(
            counters.clone(),
            config.progress_interval,
            stop.clone(),
            |now, before, elapsed, interval| {
                format!(
                    "blast: {:.1} s, {} messages ({} accepted), {:.0} msg/s so far, {:.0} msg/s last interval",
                    elapsed.as_secs_f64(),
                    now.messages,
                    now.accepted,
                    now.messages as f64 / elapsed.as_secs_f64().max(1e-9),
                    (now.messages - before.messages) as f64 / interval.as_secs_f64()
                )
            },
        )
    });
    let placement = config.plan.placement()?;
    let config = Arc::new(config);
    let messages = config.messages;
    let next_index = Arc::new(AtomicUsize::new(0));
    // A paced run keeps fixed shares: each connection's schedule is its own.
    let pool = Pool::new(
        messages,
        config.connections.max(1) as u64,
        config.fixed_shares || config.rate.is_some(),
    );
    let start = Instant::now();
    let shard_config = config.clone();
    let shard_pool = pool.clone();
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("volley-blast")
        .on_all_shards(move || {
            let index = next_index.fetch_add(1, Ordering::SeqCst);
            shard(index, cores, shard_config, shard_pool, counters, start)
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut total = Stats::default();
    for joined in handles.join_all() {
        match joined {
            Ok(stats) => total.merge(stats),
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
    total.messages_unsent += pool.never_taken();
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    Ok(Report::new(&total, messages, elapsed))
}

async fn shard(
    index: usize,
    cores: usize,
    config: Arc<BlastConfig>,
    pool: Pool,
    counters: Arc<Counters>,
    start: Instant,
) -> Stats {
    let stats = Rc::new(RefCell::new(Stats::default()));
    let connections = config.connections.max(1) as u64;
    let mut tasks = Vec::new();
    // No more connections than messages.
    for k in (index as u64..connections.min(config.messages)).step_by(cores.max(1)) {
        let work = pool.for_connection(k);
        let config = config.clone();
        let stats = stats.clone();
        let counters = counters.clone();
        tasks.push(spawn_local(async move {
            let mut conn = Connection {
                config: &config,
                stats: &stats,
                counters: counters.core(index),
                // Connection k starts k/rate after the first: arrivals are evenly spaced at
                // `rate` overall, not `connections` messages at once every connections/rate.
                start: match config.rate {
                    Some(rate) if !config.rate_bursts => {
                        start + Duration::from_secs_f64(k as f64 / rate)
                    }
                    _ => start,
                },
                per_connection_rate: config.rate.map(|r| r / connections as f64),
            };
            conn.run(work).await;
        }));
    }
    for task in tasks {
        task.await;
    }
    Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

/// A message whose body went out with the next envelope and whose end-of-data reply is pending.
#[derive(Debug, Clone, Copy)]
struct PendingBody {
    recipients_ok: u64,
    size_bytes: usize,
}

struct Connection<'a> {
    config: &'a BlastConfig,
    stats: &'a RefCell<Stats>,
    counters: &'a CoreCounters,
    /// When this connection's first message is due (with a rate).
    start: Instant,
    per_connection_rate: Option<f64>,
}

impl Connection<'_> {
    async fn run(&mut self, mut work: Work) {
        let t0 = Instant::now();
        let connected =
            TcpStream::connect_timeout(self.config.to, Duration::from_secs(CONNECT_TIMEOUT_S))
                .await;
        let stream = match connected {
            Ok(s) => s,
            Err(e) => {
                let mut stats = self.stats.borrow_mut();
                stats.connection_failed(format!("connect to {}: {e}", self.config.to));
                stats.messages_unsent += work.untaken_share();
                return;
            }
        };
        record(&mut self.stats.borrow_mut().connect_us, t0.elapsed());
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(REPLY_TIMEOUT_S)));
        let mut done = 0u64;
        if let Err(e) = self.open_session(stream, &mut work, &mut done).await {
            let mut stats = self.stats.borrow_mut();
            stats.connection_failed(format!("{}: {e}", self.config.to));
            stats.messages_unsent += work.taken() - done + work.untaken_share();
        }
    }

    /// Counts a message's final reply; `body_bytes` is the size of the body if it was sent.
    fn finish_message(
        &self,
        code: u16,
        text: &[u8],
        recipients_ok: u64,
        body_bytes: Option<usize>,
    ) {
        let mut stats = self.stats.borrow_mut();
        *stats.replies_by_code.entry(code).or_default() += 1;
        stats
            .reply_samples
            .entry(code)
            .or_insert_with(|| String::from_utf8_lossy(text).into_owned());
        stats.messages_sent += 1;
        if let Some(bytes) = body_bytes {
            stats.message_bytes += bytes as u64;
            stats.bodies_sent += 1;
        }
        CoreCounters::bump(&self.counters.messages);
        if (200..300).contains(&code) {
            stats.messages_accepted += 1;
            stats.recipients_accepted += recipients_ok;
            CoreCounters::bump(&self.counters.accepted);
        }
    }

    /// Reads the end-of-data reply of a body written at `written_at`.
    async fn end_of_data<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        replies: &mut ReplyReader,
        written_at: Instant,
        pending: PendingBody,
    ) -> io::Result<()> {
        let code = replies.next_code(stream).await?;
        record(
            &mut self.stats.borrow_mut().end_of_data_reply_us,
            written_at.elapsed(),
        );
        self.finish_message(
            code,
            replies.last_text(),
            pending.recipients_ok,
            Some(pending.size_bytes),
        );
        Ok(())
    }

    /// Greeting and EHLO, then STARTTLS and AUTH if asked; then the transactions.
    async fn open_session(
        &mut self,
        mut stream: TcpStream,
        work: &mut Work,
        done: &mut u64,
    ) -> io::Result<()> {
        let config = self.config;
        let mut replies = ReplyReader::default();
        let greeting = replies.next_code(&mut stream).await?;
        if greeting != 220 {
            return Err(io::Error::other(format!("greeting {greeting}")));
        }
        self.stats.borrow_mut().connections_ok += 1;
        ehlo(&mut stream, &mut replies, &config.ehlo).await?;
        let Some(tls) = &config.tls else {
            return self.converse(&mut stream, replies, work, done).await;
        };
        stream.write_all(b"STARTTLS\r\n").await?;
        let code = replies.next_code(&mut stream).await?;
        if code != 220 {
            return Err(io::Error::other(format!("STARTTLS refused with {code}")));
        }
        let name = rustls::pki_types::ServerName::try_from("volley-bench.test")
            .map_err(io::Error::other)?;
        let mut stream = futures_rustls::TlsConnector::from(tls.clone())
            .connect(name, stream)
            .await?;
        // Nothing read before the handshake may be used after it (RFC 3207 §4.2).
        let mut replies = ReplyReader::default();
        ehlo(&mut stream, &mut replies, &config.ehlo).await?;
        if let Some(credentials) = &config.auth {
            let command = format!("AUTH PLAIN {}\r\n", credentials.plain_response());
            stream.write_all(command.as_bytes()).await?;
            let code = replies.next_code(&mut stream).await?;
            if code != 235 {
                return Err(io::Error::other(format!(
                    "AUTH refused: {}",
                    String::from_utf8_lossy(replies.last_text())
                )));
            }
        }
        self.converse(&mut stream, replies, work, done).await
    }

    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        mut replies: ReplyReader,
        work: &mut Work,
        done: &mut u64,
    ) -> io::Result<()> {
        let config = self.config;
        let max_size = config.message.sizes.max_size();
        if config.chunking {
            return self
                .converse_chunking(stream, &mut replies, work, done)
                .await;
        }
        let mut out = Vec::with_capacity(max_size * 2 + 4096);
        let overlap = config.pipeline_depth >= 2;
        let finder = memmem::Finder::new(b"\n.");
        let mut raw = Vec::with_capacity(max_size + 1024);
        let mut pending: Option<PendingBody> = None;
        let mut needs_rset = false;
        while let Some(index) = work.take() {
            // This connection's ordinal of the message, for its pace.
            let j = work.taken() - 1;
            if let Some(rate) = self.per_connection_rate {
                let due = self.start + Duration::from_secs_f64(j as f64 / rate);
                let now = Instant::now();
                if now < due {
                    // Do not hold a body back while waiting: send it alone first.
                    if let Some(p) = pending.take() {
                        stream.write_all(&out).await?;
                        out.clear();
                        self.end_of_data(stream, &mut replies, Instant::now(), p)
                            .await?;
                        *done += 1;
                    }
                    glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
                }
            }
            if needs_rset {
                out.extend_from_slice(b"RSET\r\n");
            }
            config.message.write_envelope(index, &mut out);
            stream.write_all(&out).await?;
            let written_at = Instant::now();
            out.clear();
            if let Some(p) = pending.take() {
                self.end_of_data(stream, &mut replies, written_at, p)
                    .await?;
                *done += 1;
            }
            if needs_rset {
                replies.next_code(stream).await?;
                needs_rset = false;
            }
            let (data, stopped_by, recipients_ok) = self
                .envelope_replies(stream, &mut replies, written_at)
                .await?;
            if data != 354 {
                // The transaction stopped before the body; report the reply that stopped it.
                self.finish_message(stopped_by, replies.last_text(), 0, None);
                *done += 1;
                needs_rset = true;
                continue;
            }
            raw.clear();
            config.message.write_message(index, &mut raw);
            write_dot_stuffed(&raw, &finder, &mut out);
            let this = PendingBody {
                recipients_ok,
                size_bytes: raw.len(),
            };
            if overlap && !work.exhausted() {
                pending = Some(this);
            } else {
                stream.write_all(&out).await?;
                let written_at = Instant::now();
                out.clear();
                self.end_of_data(stream, &mut replies, written_at, this)
                    .await?;
                *done += 1;
            }
        }
        // Another connection took the message this body was to go out with.
        if let Some(p) = pending.take() {
            stream.write_all(&out).await?;
            out.clear();
            self.end_of_data(stream, &mut replies, Instant::now(), p)
                .await?;
            *done += 1;
        }
        quit(stream, &mut replies).await;
        Ok(())
    }

    /// Reads MAIL, RCPT and the data reply of one transaction; returns (final code, recipients
    /// accepted, whether it may need RSET), recording the MAIL latency from `written_at`.
    async fn envelope_replies<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        replies: &mut ReplyReader,
        written_at: Instant,
    ) -> io::Result<(u16, u16, u64)> {
        let mail = replies.next_code(stream).await?;
        record(
            &mut self.stats.borrow_mut().mail_reply_us,
            written_at.elapsed(),
        );
        let mut recipients_ok = 0u64;
        let mut first_refusal = None;
        for _ in 0..self.config.message.recipients_per_message {
            let code = replies.next_code(stream).await?;
            *self
                .stats
                .borrow_mut()
                .rcpt_replies_by_code
                .entry(code)
                .or_default() += 1;
            if (200..300).contains(&code) {
                recipients_ok += 1;
            } else {
                first_refusal.get_or_insert(code);
            }
        }
        let data = replies.next_code(stream).await?;
        let stopped_by = if !(200..300).contains(&mail) {
            mail
        } else if recipients_ok == 0 {
            first_refusal.unwrap_or(data)
        } else {
            data
        };
        Ok((data, stopped_by, recipients_ok))
    }

    /// `--chunking`: whole transactions (envelope + `BDAT n LAST` + body) pipelined.
    async fn converse_chunking<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        replies: &mut ReplyReader,
        work: &mut Work,
        done: &mut u64,
    ) -> io::Result<()> {
        /// What a reply in flight belongs to.
        enum InFlight {
            Rset,
            Transaction {
                written_at: Instant,
                size_bytes: usize,
            },
        }
        let config = self.config;
        let depth = config.pipeline_depth.max(1) as usize;
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(depth + 1);
        let max_size = config.message.sizes.max_size();
        let mut out = Vec::with_capacity((max_size + 512) * depth.min(64));
        let mut raw = Vec::with_capacity(max_size + 1024);
        let mut needs_rset = false;
        loop {
            let mut batch = 0usize;
            while !work.exhausted() && in_flight.len() < depth {
                if let Some(rate) = self.per_connection_rate {
                    let due = self.start + Duration::from_secs_f64(work.taken() as f64 / rate);
                    if Instant::now() < due {
                        if batch == 0 && in_flight.is_empty() {
                            glommio::timer::sleep(due.saturating_duration_since(Instant::now()))
                                .await;
                        } else {
                            break;
                        }
                    }
                }
                let Some(index) = work.take() else {
                    break;
                };
                if needs_rset {
                    out.extend_from_slice(b"RSET\r\n");
                    in_flight.push_back(InFlight::Rset);
                    needs_rset = false;
                }
                config.message.write_envelope_without_data(index, &mut out);
                raw.clear();
                config.message.write_message(index, &mut raw);
                let _ = write!(out, "BDAT {} LAST\r\n", raw.len());
                out.extend_from_slice(&raw);
                in_flight.push_back(InFlight::Transaction {
                    written_at: Instant::now(),
                    size_bytes: raw.len(),
                });
                batch += 1;
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
                let now = Instant::now();
                for entry in in_flight.iter_mut().rev().take(batch) {
                    if let InFlight::Transaction { written_at, .. } = entry {
                        *written_at = now;
                    }
                }
            }
            match in_flight.pop_front() {
                // Nothing in flight and nothing more to send.
                None => break,
                Some(InFlight::Rset) => {
                    replies.next_code(stream).await?;
                }
                Some(InFlight::Transaction {
                    written_at,
                    size_bytes,
                }) => {
                    let (bdat, stopped_by, recipients_ok) =
                        self.envelope_replies(stream, replies, written_at).await?;
                    record(
                        &mut self.stats.borrow_mut().end_of_data_reply_us,
                        written_at.elapsed(),
                    );
                    let accepted = (200..300).contains(&bdat);
                    self.finish_message(
                        stopped_by,
                        replies.last_text(),
                        if accepted { recipients_ok } else { 0 },
                        Some(size_bytes),
                    );
                    needs_rset |= !accepted;
                    *done += 1;
                }
            }
        }
        quit(stream, replies).await;
        Ok(())
    }
}

/// Says EHLO and checks that it was welcome.
async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    replies: &mut ReplyReader,
    name: &str,
) -> io::Result<()> {
    stream
        .write_all(format!("EHLO {name}\r\n").as_bytes())
        .await?;
    let code = replies.next_code(stream).await?;
    if code != 250 {
        return Err(io::Error::other(format!("EHLO refused with {code}")));
    }
    Ok(())
}

/// QUIT politely; the run's figures do not depend on it.
async fn quit<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, replies: &mut ReplyReader) {
    if stream.write_all(b"QUIT\r\n").await.is_ok() {
        let _ = replies.next_code(stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_plain_response() {
        let c = Credentials::parse("alice:se:cret").unwrap();
        assert_eq!(c.password, "se:cret");
        // base64("\0alice\0se:cret")
        assert_eq!(c.plain_response(), "AGFsaWNlAHNlOmNyZXQ=");
        assert!(Credentials::parse("nopass").is_err());
        assert!(!format!("{c:?}").contains("se:cret"));
    }
}
