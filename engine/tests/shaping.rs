//! Shaping at the receiving end: the real daemon (`target/debug/volley`) delivers to the benchmark
//! sink (`target/debug/volley-bench sink`, built by `cargo build --workspace`) on loopback, and the
//! sink's log shows what arrived. Each test is bounded (well under a minute).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn volley_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_volley"))
}

fn bench_bin() -> PathBuf {
    let p = volley_bin().with_file_name("volley-bench");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, then waits for the exit (graceful stop: counters saved).
    fn stop(mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("volley did not stop after SIGTERM");
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port}");
}

fn start_sink(dir: &Path, extra: &[&str]) -> (Proc, u16, PathBuf) {
    let port = free_port();
    let log = dir.join(format!("sink-{port}.jsonl"));
    let child = Command::new(bench_bin())
        .args(["sink", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--log", log.to_str().unwrap()])
        .args(["--cores", "1", "--stats-interval-s", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sink starts");
    let sink = Proc(child);
    wait_for_port(port);
    (sink, port, log)
}

struct Daemon {
    proc: Proc,
    smtp: u16,
    api: u16,
}

/// Writes `volley.toml` (relay listener, API, one core) with `body` appended, and starts it.
fn start_volley(dir: &Path, smtp: u16, api: u16, body: &str) -> Daemon {
    let config = format!(
        r#"
[server]
hostname = "volley.test"
cores = 1
spool_dir = "{spool}"

[[listener]]
address = "127.0.0.1:{smtp}"
relay_networks = ["127.0.0.0/8"]

[api]
address = "127.0.0.1:{api}"
{body}
"#,
        spool = dir.join("spool").display(),
    );
    let path = dir.join("volley.toml");
    std::fs::write(&path, config).unwrap();
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("volley.log"))
        .unwrap();
    let child = Command::new(volley_bin())
        .args(["serve", "--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("volley starts");
    let proc = Proc(child);
    wait_for_port(smtp);
    wait_for_port(api);
    Daemon { proc, smtp, api }
}

fn read_reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

/// Sends `count` messages on one SMTP connection; returns the end-of-data replies.
fn send(port: u16, count: usize, rcpt: &str, header: &str) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    read_reply(&mut r);
    w.write_all(b"EHLO client.test\r\n").unwrap();
    read_reply(&mut r);
    let mut replies = Vec::new();
    for i in 0..count {
        w.write_all(b"MAIL FROM:<sender@client.test>\r\n").unwrap();
        let mail = read_reply(&mut r);
        if !mail.starts_with('2') {
            replies.push(mail);
            continue;
        }
        w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .unwrap();
        assert!(read_reply(&mut r).starts_with("250"));
        w.write_all(b"DATA\r\n").unwrap();
        assert!(read_reply(&mut r).starts_with("354"));
        let msg =
            format!("{header}Subject: m{i}\r\nMessage-ID: <m{i}@client.test>\r\n\r\nhi\r\n.\r\n");
        w.write_all(msg.as_bytes()).unwrap();
        replies.push(read_reply(&mut r));
    }
    let _ = w.write_all(b"QUIT\r\n");
    replies
}

fn http(port: u16, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(api: u16, name: &str) -> f64 {
    let text = http(api, "GET", "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// The sink's log lines as JSON.
fn logged(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_logged(log: &Path, count: usize, within: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let lines = logged(log);
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn volley_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("volley.log")).unwrap_or_default()
}

#[test]
fn connections_and_messages_per_connection_stay_under_their_caps() {
    let dir = tempfile::tempdir().unwrap();
    // The sink turns away a 4th concurrent connection with 421: any excess would show as deferrals.
    let (_sink, sink_port, log) = start_sink(
        dir.path(),
        &["--max-connections-per-ip", "3", "--delay-ms", "50"],
    );
    let (smtp, api) = (free_port(), free_port());
    let d = start_volley(
        dir.path(),
        smtp,
        api,
        &format!(
            r#"
[routes]
"example.test" = "127.0.0.1:{sink_port}"
[[vmta]]
name = "v1"
source_ip = "127.0.0.1"
ehlo_hostname = "v1.test"
[[pool]]
name = "default"
vmtas = ["v1"]
[[domain]]
match = "example.test"
max_connections = 3
max_messages_per_connection = 5
"#
        ),
    );
    let replies = send(d.smtp, 90, "r@example.test", "");
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    let lines = wait_logged(&log, 90, Duration::from_secs(40));
    assert_eq!(lines.len(), 90, "{}", volley_log(dir.path()));
    let mut per_connection: HashMap<u64, usize> = HashMap::new();
    for l in &lines {
        *per_connection
            .entry(l["connection_id"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert!(
        per_connection.values().all(|&n| n <= 5),
        "{per_connection:?}"
    );
    assert!(per_connection.len() >= 18, "{per_connection:?}");
    assert_eq!(
        metric(d.api, "volley_deferred_total"),
        0.0,
        "a 421 from the sink means more than 3 connections: {}",
        volley_log(dir.path())
    );
}

#[test]
fn rate_stays_within_five_percent_of_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, sink_port, log) = start_sink(dir.path(), &[]);
    let (smtp, api) = (free_port(), free_port());
    let d = start_volley(
        dir.path(),
        smtp,
        api,
        &format!(
            r#"
[routes]
"example.test" = "127.0.0.1:{sink_port}"
[[domain]]
match = "example.test"
max_messages_per_minute = 600
"#
        ),
    );
    // Queuing (hundreds a second) outpaces the limit (10/s), so the limiter sets the pace.
    let total = 130;
    let replies = send(d.smtp, total, "r@example.test", "");
    assert!(replies.iter().all(|r| r.starts_with("250")));
    // Arrival times, polled from the sink log (flushed every 100 ms).
    let mut arrivals: Vec<(Instant, usize)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let n = logged(&log).len();
        if arrivals.last().is_none_or(|&(_, m)| m != n) {
            arrivals.push((Instant::now(), n));
        }
        if n >= total || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t0, n0) = *arrivals
        .iter()
        .find(|&&(_, n)| n >= 20)
        .expect("20 arrived");
    let (t1, n1) = *arrivals.last().unwrap();
    assert_eq!(n1, total, "{}", volley_log(dir.path()));
    let rate = (n1 - n0) as f64 / t1.duration_since(t0).as_secs_f64();
    assert!(
        (rate - 10.0).abs() <= 0.5,
        "{rate:.2} messages/s, limit 10/s"
    );
}

#[test]
fn backoff_is_entered_on_too_many_connections_and_left_after_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, sink_port, log) = start_sink(
        dir.path(),
        &["--max-connections-per-ip", "1", "--delay-ms", "20"],
    );
    let (smtp, api) = (free_port(), free_port());
    let d = start_volley(
        dir.path(),
        smtp,
        api,
        &format!(
            r#"
[routes]
"example.test" = "127.0.0.1:{sink_port}"
[[domain]]
match = "example.test"
max_connections = 4
max_messages_per_connection = 1000
retry_intervals = ["2s"]
backoff_max_connections = 1
backoff_max_messages_per_minute = 6000
backoff_retry_after = "2s"
backoff_recovery_deliveries = 20
[[backoff]]
pattern = "too many connections"
action = "backoff"
"#
        ),
    );
    let replies = send(d.smtp, 100, "r@example.test", "");
    assert!(replies.iter().all(|r| r.starts_with("250")));
    let lines = wait_logged(&log, 100, Duration::from_secs(40));
    assert_eq!(lines.len(), 100, "{}", volley_log(dir.path()));
    // Recovery runs on the deliveries; the gauge is refreshed once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let text = volley_log(dir.path());
    assert!(text.contains("entered backoff"), "{text}");
    assert!(text.contains("left backoff after"), "{text}");
    assert!(metric(d.api, "volley_backoff_transitions_total") >= 2.0);
    assert_eq!(metric(d.api, "volley_queues_in_backoff"), 0.0);
}

#[test]
fn a_pool_skips_a_vmta_whose_address_cannot_be_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, sink_port, log) = start_sink(dir.path(), &[]);
    let (smtp, api) = (free_port(), free_port());
    // 192.0.2.1 (TEST-NET-1) is on no interface: bind() fails with EADDRNOTAVAIL, nothing is sent.
    let d = start_volley(
        dir.path(),
        smtp,
        api,
        &format!(
            r#"
[routes]
"example.test" = "127.0.0.1:{sink_port}"
[[vmta]]
name = "unbindable"
source_ip = "192.0.2.1"
ehlo_hostname = "bad.test"
[[vmta]]
name = "good"
source_ip = "127.0.0.1"
ehlo_hostname = "good.test"
[[pool]]
name = "default"
vmtas = ["unbindable", "good"]
"#
        ),
    );
    let replies = send(d.smtp, 20, "r@example.test", "");
    assert!(replies.iter().all(|r| r.starts_with("250")));
    let lines = wait_logged(&log, 20, Duration::from_secs(30));
    assert_eq!(lines.len(), 20, "{}", volley_log(dir.path()));
    assert!(lines.iter().all(|l| l["ehlo"] == "good.test"), "{lines:?}");
    let status = http(d.api, "GET", "/v1/vmta-status");
    assert!(status.contains("\"unbindable\""), "{status}");
    // The operator can take the good one out and put it back.
    assert!(http(d.api, "POST", "/v1/vmtas/good/disable").starts_with("HTTP/1.1 200"));
    assert!(http(d.api, "GET", "/v1/vmta-status").contains("\"good\""));
    assert!(http(d.api, "POST", "/v1/vmtas/good/enable").starts_with("HTTP/1.1 200"));
    assert!(!http(d.api, "GET", "/v1/vmta-status").contains("\"good\""));
}

#[test]
fn sending_limits_and_credits_hold_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, sink_port, _log) = start_sink(dir.path(), &[]);
    let (smtp, api) = (free_port(), free_port());
    let body = format!(
        r#"
[routes]
"example.test" = "127.0.0.1:{sink_port}"
[[customer]]
name = "acme"
max_messages_per_day = 4
credits = 2
"#
    );
    let header = "X-Volley-Customer: acme\r\n";
    let d = start_volley(dir.path(), smtp, api, &body);
    let replies = send(d.smtp, 5, "r@example.test", header);
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    d.proc.stop();

    let d = start_volley(dir.path(), smtp, api, &body);
    let replies = send(d.smtp, 2, "r@example.test", header);
    assert!(
        replies[0].starts_with("250"),
        "the last credit: {replies:?}"
    );
    assert!(
        replies[1].starts_with("451 4.7.1 Daily sending limit of 4 messages reached for customer acme and no credits left"),
        "{replies:?}"
    );
    let usage = http(d.api, "GET", "/v1/customers/acme/usage");
    assert!(usage.contains("\"credits_left\":0"), "{usage}");
    assert!(usage.contains("\"messages_today\":4"), "{usage}");
    // Mail of other senders still flows.
    assert!(send(d.smtp, 1, "r@example.test", "")[0].starts_with("250"));
    assert_eq!(metric(d.api, "volley_sending_limit_refusals_total"), 1.0);
}
