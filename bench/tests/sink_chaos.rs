//! The sink's fault modes, each driven by a raw SMTP client on loopback.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_volley-bench");

/// How long "nothing arrives" is watched for.
const SILENCE: Duration = Duration::from_millis(500);
/// Bound on every wait for a reply that must come.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running sink on a free loopback port, killed on drop.
struct Sink {
    child: Child,
    addr: SocketAddr,
}

impl Sink {
    fn start(extra: &[&str]) -> Sink {
        let (child, addr) = common::spawn_sink(BIN, extra);
        Sink { child, addr }
    }

    fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).expect("connect to the sink");
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("read timeout");
        Client {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            stream,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// One whole reply (all its lines), as text.
    fn reply(&mut self) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read a reply line");
            assert!(n > 0, "connection closed; reply so far: {text:?}");
            text.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return text;
            }
        }
    }

    fn command(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write a command");
        self.reply()
    }

    /// Greeting, EHLO, MAIL and one RCPT, each asserted to succeed.
    fn envelope(&mut self) {
        assert!(self.reply().starts_with("220 "));
        assert!(self.command("EHLO chaos.test").starts_with("250"));
        assert!(self.command("MAIL FROM:<a@src.test>").starts_with("250 "));
        assert!(self.command("RCPT TO:<r@dst.test>").starts_with("250 "));
    }

    /// Whether nothing (no byte, no end of the stream) arrives within `SILENCE`; consumes nothing.
    fn silent_for_a_while(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        self.stream
            .set_read_timeout(Some(SILENCE))
            .expect("read timeout");
        let mut byte = [0u8; 1];
        let silent = match self.stream.peek(&mut byte) {
            Ok(_) => false,
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
        self.stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("read timeout");
        silent
    }

    /// Reads until the end of the stream or an error, giving what arrived and how it ended.
    fn read_to_close(&mut self) -> (String, Result<(), ErrorKind>) {
        let mut got = Vec::new();
        let result = self
            .reader
            .read_to_end(&mut got)
            .map(|_| ())
            .map_err(|e| e.kind());
        (String::from_utf8_lossy(&got).into_owned(), result)
    }
}

#[test]
fn a_tarpit_accepts_and_never_sends_a_byte() {
    let sink = Sink::start(&["--tarpit"]);
    let mut client = sink.connect();
    assert!(client.silent_for_a_while(), "the tarpit sent something");
    // Still no answer to a command: the connection is open but dead.
    client.stream.write_all(b"EHLO chaos.test\r\n").unwrap();
    assert!(client.silent_for_a_while(), "the tarpit answered EHLO");
}

#[test]
fn a_stalled_starttls_answers_220_then_never_answers_the_handshake() {
    let sink = Sink::start(&["--stall-tls"]);
    let mut client = sink.connect();
    assert!(client.reply().starts_with("220 "));
    let ehlo = client.command("EHLO chaos.test");
    assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
    assert!(client.command("STARTTLS").starts_with("220 2.0.0"));
    // The start of a TLS ClientHello record: a real server answers with a ServerHello.
    client
        .stream
        .write_all(&[
            0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
        ])
        .unwrap();
    assert!(
        client.silent_for_a_while(),
        "the stalled handshake answered"
    );
}

#[test]
fn without_stall_tls_starttls_is_not_offered() {
    let sink = Sink::start(&[]);
    let mut client = sink.connect();
    client.reply();
    let ehlo = client.command("EHLO chaos.test");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
}

#[test]
fn a_receiver_that_stops_reading_in_data_blocks_the_sender() {
    let sink = Sink::start(&["--stop-reading-in-data"]);
    let mut client = sink.connect();
    client.envelope();
    assert!(client.command("DATA").starts_with("354 "));
    client
        .stream
        .set_write_timeout(Some(SILENCE))
        .expect("write timeout");
    let line = [b'x'; 1022]
        .iter()
        .copied()
        .chain(*b"\r\n")
        .collect::<Vec<u8>>();
    let limit_bytes = 64 * 1024 * 1024;
    let mut written = 0usize;
    let blocked = loop {
        match client.stream.write(&line) {
            Ok(n) => written += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true;
            }
            Err(e) => panic!("write failed with {e} after {written} bytes"),
        }
        if written > limit_bytes {
            break false;
        }
    };
    assert!(blocked, "{written} bytes written and the sink still reads");
    // The end of data that might fit never gets a reply.
    let _ = client.stream.write(b"\r\n.\r\n");
    assert!(client.silent_for_a_while(), "the stopped reader answered");
}

#[test]
fn a_receiver_that_stops_reading_never_answers_a_pipelined_bdat() {
    let sink = Sink::start(&["--stop-reading-in-data"]);
    let mut client = sink.connect();
    assert!(client.reply().starts_with("220 "));
    assert!(client.command("EHLO chaos.test").contains("CHUNKING"));
    // One write: envelope and a whole small body, as a pipelining BDAT client sends it.
    client
        .stream
        .write_all(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<r@dst.test>\r\nBDAT 5 LAST\r\nhello")
        .unwrap();
    assert!(client.reply().starts_with("250 "), "MAIL");
    assert!(client.reply().starts_with("250 "), "RCPT");
    assert!(client.silent_for_a_while(), "the BDAT was answered");
}

#[test]
fn a_reset_closes_the_connection_mid_data() {
    let sink = Sink::start(&["--reset-percent", "100"]);
    let mut client = sink.connect();
    client.envelope();
    assert!(client.command("DATA").starts_with("354 "));
    // Part of a body, no end of data: the sink resets the connection.
    let _ = client
        .stream
        .write_all(b"Subject: chaos\r\n\r\nfirst line\r\n");
    let (rest, end) = client.read_to_close();
    assert!(
        !rest.contains("250"),
        "the reset transaction was answered: {rest:?}"
    );
    assert_eq!(end, Err(ErrorKind::ConnectionReset), "got {rest:?}");
}

#[test]
fn a_421_greeting_comes_in_both_forms_and_closes() {
    let sink = Sink::start(&["--greeting-421-percent", "100"]);
    let (mut busy, mut too_many) = (0, 0);
    for _ in 0..40 {
        let mut client = sink.connect();
        let (greeting, end) = client.read_to_close();
        assert_eq!(end, Ok(()), "closed after {greeting:?}");
        assert!(greeting.starts_with("421 4."), "{greeting:?}");
        if greeting.contains("too many connections") {
            too_many += 1;
        } else {
            assert!(greeting.starts_with("421 4.3.2"), "{greeting:?}");
            busy += 1;
        }
    }
    assert!(busy > 0 && too_many > 0, "busy {busy}, too many {too_many}");
}

#[test]
fn combined_connection_modes_split_the_connections() {
    let sink = Sink::start(&["--tarpit", "50", "--greeting-421-percent", "50"]);
    let (mut silent, mut refused) = (0, 0);
    for _ in 0..20 {
        let mut client = sink.connect();
        if client.silent_for_a_while() {
            silent += 1;
        } else {
            let (greeting, _) = client.read_to_close();
            assert!(greeting.starts_with("421 "), "{greeting:?}");
            refused += 1;
        }
    }
    assert!(silent > 0 && refused > 0, "silent {silent}, 421 {refused}");
}

#[test]
fn failures_hit_the_chosen_stages() {
    let sink = Sink::start(&["--tempfail-percent", "100", "--fail-at", "mail"]);
    let mut client = sink.connect();
    client.reply();
    client.command("EHLO chaos.test");
    let mail = client.command("MAIL FROM:<a@src.test>");
    assert!(mail.starts_with("451 4.3.0"), "{mail}");

    let sink = Sink::start(&["--permfail-percent", "100", "--fail-at", "rcpt"]);
    let mut client = sink.connect();
    client.reply();
    client.command("EHLO chaos.test");
    assert!(client.command("MAIL FROM:<a@src.test>").starts_with("250 "));
    let rcpt = client.command("RCPT TO:<r@dst.test>");
    assert!(rcpt.starts_with("550 5.1.1"), "{rcpt}");

    let sink = Sink::start(&["--tempfail-percent", "100", "--fail-at", "data"]);
    let mut client = sink.connect();
    client.envelope();
    let data = client.command("DATA");
    assert!(data.starts_with("451 4.3.0"), "{data}");

    let sink = Sink::start(&["--permfail-percent", "100", "--fail-at", "end-of-data"]);
    let mut client = sink.connect();
    client.envelope();
    assert!(client.command("DATA").starts_with("354 "));
    let end = client.command("Subject: s\r\n\r\nbody\r\n.");
    assert!(end.starts_with("550 5.1.1"), "{end}");
}

#[test]
fn mixed_failures_give_4xx_and_5xx_at_rcpt() {
    let sink = Sink::start(&[
        "--tempfail-percent",
        "50",
        "--permfail-percent",
        "50",
        "--fail-at",
        "rcpt",
    ]);
    let mut client = sink.connect();
    client.reply();
    client.command("EHLO chaos.test");
    assert!(client.command("MAIL FROM:<a@src.test>").starts_with("250 "));
    let (mut temp, mut perm) = (0, 0);
    for i in 0..40 {
        let reply = client.command(&format!("RCPT TO:<r{i}@dst.test>"));
        match reply.get(..1) {
            Some("4") => temp += 1,
            Some("5") => perm += 1,
            _ => panic!("RCPT accepted at 100 % failures: {reply}"),
        }
    }
    assert!(temp > 0 && perm > 0, "4xx {temp}, 5xx {perm}");
}

#[test]
fn slow_replies_wait_before_each_reply() {
    let slow = Duration::from_millis(300);
    let sink = Sink::start(&["--slow-reply-ms", "300"]);
    let started = Instant::now();
    let mut client = sink.connect();
    assert!(client.reply().starts_with("220 "));
    assert!(
        started.elapsed() >= slow,
        "greeting after {:?}",
        started.elapsed()
    );
    let asked = Instant::now();
    assert!(client.command("NOOP").starts_with("250 "));
    assert!(
        asked.elapsed() >= slow,
        "NOOP reply after {:?}",
        asked.elapsed()
    );
}

#[test]
fn impossible_fault_shares_are_refused() {
    let out = Command::new(BIN)
        .args([
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--tarpit",
            "60",
            "--stall-tls",
            "60",
        ])
        .output()
        .expect("run the sink");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceed 100"));
}
