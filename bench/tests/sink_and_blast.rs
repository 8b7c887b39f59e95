//! End-to-end tests of the `volley-bench` binary: a real sink on a loopback port, real blasts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_volley-bench");

/// A running sink; stopped with SIGTERM on drop (or explicitly by `stop`).
struct Sink {
    child: Child,
    addr: SocketAddr,
}

impl Sink {
    fn start(extra: &[&str]) -> Sink {
        let (child, addr) = common::spawn_sink(BIN, extra);
        Sink { child, addr }
    }

    /// SIGTERM, then wait: the sink must flush its log and exit 0.
    fn stop(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for the sink");
        assert!(status.success(), "sink exit status {status}");
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn blast(addr: SocketAddr, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args([
            "blast",
            "--to",
            &addr.to_string(),
            "--cores",
            "1",
            "--progress-interval-s",
            "0",
        ])
        .args(extra)
        .output()
        .expect("run blast")
}

fn blast_json(addr: SocketAddr, extra: &[&str]) -> Value {
    let mut args = extra.to_vec();
    args.push("--json");
    let out = blast(addr, &args);
    assert!(
        out.status.success(),
        "blast failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("blast --json prints one JSON object")
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
        .collect()
}

fn codes(report: &Value) -> BTreeMap<String, u64> {
    report["replies_by_code"]
        .as_object()
        .expect("replies_by_code")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

#[test]
fn blast_to_sink_logs_every_message_with_its_recipients_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sink.jsonl");
    let sink = Sink::start(&["--log", log.to_str().unwrap()]);
    let report = blast_json(
        sink.addr,
        &[
            "--messages",
            "300",
            "--size",
            "2048",
            "--connections",
            "4",
            "--recipients",
            "3",
            "--domains",
            "2",
            "--header",
            "X-Test:yes",
        ],
    );
    sink.stop();

    assert_eq!(report["messages_requested"], 300);
    assert_eq!(report["messages_sent"], 300);
    assert_eq!(report["messages_accepted"], 300);
    assert_eq!(report["messages_failed"], 0);
    assert_eq!(report["recipients_accepted"], 900);
    assert_eq!(report["connections_ok"], 4);
    assert_eq!(codes(&report), BTreeMap::from([("250".to_string(), 300)]));
    for stage in ["connect", "mail_reply", "end_of_data_reply"] {
        let p = &report["latency_us"][stage];
        for field in ["count", "p50", "p90", "p99", "p999", "max"] {
            assert!(p[field].is_u64(), "{stage}.{field} in {report}");
        }
    }
    assert_eq!(report["latency_us"]["end_of_data_reply"]["count"], 300);
    assert_eq!(report["latency_us"]["connect"]["count"], 4);
    for field in [
        "elapsed_s",
        "messages_per_s",
        "mib_per_s",
        "recipients_per_s",
    ] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}");
    }

    let lines = log_lines(&log);
    assert_eq!(lines.len(), 300);
    let mut recipients = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for line in &lines {
        assert_eq!(line["size_bytes"], 2048, "{line}");
        assert_eq!(line["peer_ip"], "127.0.0.1");
        assert_eq!(line["ehlo"], "blast.volley-bench.test");
        assert_eq!(line["sender"], "blast@volley-bench.test");
        assert_eq!(line["tls"], false);
        assert!(line["connection_id"].is_u64());
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        let rcpts = line["recipients"].as_array().unwrap();
        assert_eq!(rcpts.len(), 3);
        recipients.extend(rcpts.iter().map(|r| r.as_str().unwrap().to_string()));
        let id = line["message_id"].as_str().unwrap();
        assert!(
            id.starts_with("<blast-") && id.ends_with("@volley-bench>"),
            "{id}"
        );
        ids.insert(id.to_string());
    }
    let expected: BTreeSet<String> = (0..900)
        .map(|g| format!("user{g}@d{}.test", g % 2))
        .collect();
    assert_eq!(recipients, expected);
    assert_eq!(ids.len(), 300, "Message-IDs are unique");
}

#[test]
fn every_message_tempfails_at_100_percent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sink.jsonl");
    let sink = Sink::start(&["--tempfail-percent", "100", "--log", log.to_str().unwrap()]);
    let report = blast_json(sink.addr, &["--messages", "50", "--connections", "2"]);
    sink.stop();
    assert_eq!(codes(&report), BTreeMap::from([("450".to_string(), 50)]));
    assert_eq!(report["messages_accepted"], 0);
    assert_eq!(report["messages_failed"], 50);
    assert!(
        log_lines(&log).is_empty(),
        "refused messages are not logged"
    );
    // The text report names codes too.
    let sink = Sink::start(&["--permfail-percent", "100"]);
    let out = blast(sink.addr, &["--messages", "5", "--connections", "1"]);
    sink.stop();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("replies by code: 550: 5"), "{text}");
}

#[test]
fn failure_percentages_are_roughly_right() {
    let sink = Sink::start(&["--tempfail-percent", "30", "--permfail-percent", "20"]);
    let report = blast_json(sink.addr, &["--messages", "2000", "--connections", "8"]);
    sink.stop();
    let c = codes(&report);
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    assert_eq!(get("250") + get("450") + get("550"), 2000, "{c:?}");
    // Binomial with n=2000: the standard deviation is about 20 for 30 %, so these bounds are wide.
    assert!((480..=720).contains(&get("450")), "{c:?}");
    assert!((300..=500).contains(&get("550")), "{c:?}");
    assert_eq!(report["messages_accepted"], get("250"));
}

/// Sends `commands` in one write and reads until `replies` replies arrived; returns their codes.
fn converse(stream: &mut TcpStream, commands: &str, replies: usize) -> Vec<u16> {
    stream.write_all(commands.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut codes = Vec::new();
    let mut line = String::new();
    while codes.len() < replies {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        if line.as_bytes().get(3) != Some(&b'-') {
            codes.push(line[..3].parse().unwrap());
        }
    }
    codes
}

#[test]
fn tempfail_and_permfail_local_parts_are_refused_at_rcpt() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sink.jsonl");
    let sink = Sink::start(&["--log", log.to_str().unwrap()]);
    let mut s = TcpStream::connect(sink.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let codes = converse(
        &mut s,
        "EHLO tester\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<tempfail@x.test>\r\n\
RCPT TO:<tempfail+tag@x.test>\r\nRCPT TO:<permfail@x.test>\r\nRCPT TO:<ok@x.test>\r\nDATA\r\n",
        8,
    );
    assert_eq!(codes, [220, 250, 250, 451, 451, 550, 250, 354]);
    let codes = converse(
        &mut s,
        "Message-ID: <manual@test>\r\n\r\n..dotted\r\n.\r\nMAIL FROM:<a@src.test>\r\n\
RCPT TO:<PermFail+x@y.test>\r\nDATA\r\nQUIT\r\n",
        5,
    );
    assert_eq!(codes, [250, 250, 550, 554, 221]);
    drop(s);
    sink.stop();
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["recipients"], serde_json::json!(["ok@x.test"]));
    assert_eq!(lines[0]["ehlo"], "tester");
    assert_eq!(lines[0]["message_id"], "<manual@test>");
    assert_eq!(
        lines[0]["size_bytes"],
        27 + 2 + 9,
        "dot-stuffing removed from the size"
    );
}

#[test]
fn connections_beyond_the_per_ip_limit_get_421() {
    let sink = Sink::start(&["--max-connections-per-ip", "1"]);
    let mut first = TcpStream::connect(sink.addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(converse(&mut first, "", 1), [220]);
    let mut second = TcpStream::connect(sink.addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(converse(&mut second, "", 1), [421]);
    drop(first);
    // The slot frees when the first connection ends.
    let mut third = None;
    for _ in 0..50 {
        let mut s = TcpStream::connect(sink.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if converse(&mut s, "", 1) == [220] {
            third = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(third.is_some(), "slot was never freed");
    sink.stop();
}

/// Four connections against a sink that takes one: with the shared pool (the default) the one
/// admitted connection sends every message, each once; with `--fixed-shares` the three refused
/// connections' shares go unsent.
#[test]
fn the_connections_share_one_pool_unless_asked_for_fixed_shares() {
    for fixed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sink.jsonl");
        let sink = Sink::start(&[
            "--max-connections-per-ip",
            "1",
            "--log",
            log.to_str().unwrap(),
        ]);
        let mut args = vec!["--messages", "200", "--connections", "4", "--json"];
        if fixed {
            args.push("--fixed-shares");
        }
        let out = blast(sink.addr, &args);
        sink.stop();
        let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
        assert_eq!(report["connections_ok"], 1, "{report}");
        let ids: BTreeSet<String> = log_lines(&log)
            .iter()
            .map(|l| l["message_id"].as_str().unwrap().to_string())
            .collect();
        if fixed {
            assert_eq!(report["messages_sent"], 50, "{report}");
            assert_eq!(report["messages_unsent"], 150, "{report}");
            assert_eq!(ids.len(), 50);
        } else {
            assert_eq!(report["messages_sent"], 200, "{report}");
            assert_eq!(report["messages_unsent"], 0, "{report}");
            assert_eq!(log_lines(&log).len(), 200);
            assert_eq!(ids.len(), 200, "each message once");
        }
    }
}

#[test]
fn delay_holds_the_end_of_data_reply() {
    let sink = Sink::start(&["--delay-ms", "150"]);
    let report = blast_json(
        sink.addr,
        &[
            "--messages",
            "3",
            "--connections",
            "1",
            "--pipeline-depth",
            "1",
        ],
    );
    sink.stop();
    assert_eq!(report["messages_accepted"], 3);
    assert!(
        report["latency_us"]["end_of_data_reply"]["p50"]
            .as_u64()
            .unwrap()
            >= 150_000
    );
    assert!(report["latency_us"]["mail_reply"]["max"].as_u64().unwrap() < 150_000);
}

#[test]
fn rate_paces_the_load() {
    let sink = Sink::start(&[]);
    let report = blast_json(
        sink.addr,
        &["--messages", "40", "--connections", "2", "--rate", "100"],
    );
    sink.stop();
    assert_eq!(report["messages_accepted"], 40);
    // 40 messages at 100/s: the last ones are due after about 0.38 s.
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    assert!((0.3..3.0).contains(&elapsed), "elapsed {elapsed}");
}

/// Milliseconds of the day of a sink log line's `time` (`...THH:MM:SS.mmmZ`).
fn logged_ms(line: &Value) -> i64 {
    let time = line["time"].as_str().expect("time");
    let clock = time.split('T').nth(1).expect("a time of day");
    let (hms, ms) = clock.trim_end_matches('Z').split_once('.').expect("ms");
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().expect("number"));
    let (h, m, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    ((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().expect("ms")
}

/// Gaps under 10 ms between consecutive arrivals at the sink of a paced blast.
fn close_arrivals(extra: &[&str]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sink.jsonl");
    let sink = Sink::start(&["--log", log.to_str().unwrap()]);
    let mut args = vec!["--messages", "24", "--connections", "4", "--rate", "20"];
    args.extend_from_slice(extra);
    let report = blast_json(sink.addr, &args);
    sink.stop();
    assert_eq!(report["messages_accepted"], 24);
    let mut times: Vec<i64> = log_lines(&log).iter().map(logged_ms).collect();
    assert_eq!(times.len(), 24);
    times.sort_unstable();
    times.windows(2).filter(|w| w[1] - w[0] < 10).count()
}

#[test]
fn rate_spreads_connections_evenly_unless_asked_for_bursts() {
    // 20 messages/s over 4 connections: one arrival every 50 ms; with --rate-bursts, the four
    // connections send together every 200 ms (3 close gaps in each of the 6 bursts). The margins
    // leave room for a loaded machine making a few sends late.
    let spread = close_arrivals(&[]);
    let bursts = close_arrivals(&["--rate-bursts"]);
    assert!(spread <= 6, "{spread} of 23 gaps under 10 ms when spread");
    assert!(
        bursts >= 12,
        "only {bursts} of 23 gaps under 10 ms in bursts"
    );
}

#[test]
fn blast_fails_when_no_connection_succeeds() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = blast(
        closed,
        &["--messages", "10", "--connections", "2", "--json"],
    );
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages_unsent"], 10);
    assert_eq!(report["connection_errors"], 2);
}

#[test]
fn relay_runs_ceiling_and_volley_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    // The workspace's `volley` sits next to `volley-bench` (cargo test --workspace builds both).
    let volley = std::path::Path::new(BIN).with_file_name("volley");
    assert!(
        volley.exists(),
        "build the workspace first: {} is missing",
        volley.display()
    );
    let out = Command::new(BIN)
        .args([
            "relay",
            "--messages",
            "300",
            "--connections",
            "4",
            "--timeout-s",
            "60",
        ])
        .arg("--volley")
        .arg(&volley)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Volley (blast → volley → sink)"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("relay.json")).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r["delivered"], 300, "{r}");
        assert!(r["msg_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let svg = std::fs::read_to_string(dir.path().join("relay.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    // The accept latency: percentiles in the JSON, one curve per run in the second chart.
    for r in results {
        let l = &r["accept_latency_ms"];
        let at = |k: &str| l[k].as_f64().unwrap_or(-1.0);
        assert!(at("p50") > 0.0, "{r}");
        assert!(at("p50") <= at("p90") && at("p90") <= at("p99"), "{r}");
        assert!(at("p99") <= at("p999") && at("p999") <= at("max"), "{r}");
    }
    let latency = std::fs::read_to_string(dir.path().join("relay-latency.svg")).unwrap();
    assert_eq!(latency.matches("<polyline").count(), 2);
    assert!(latency.contains(">p99.9<"));
}

#[test]
fn relay_refuses_an_unknown_peer() {
    let dir = tempfile::tempdir().unwrap();
    let volley = std::path::Path::new(BIN).with_file_name("volley");
    let out = Command::new(BIN)
        .args(["relay", "--messages", "10", "--peer", "exim"])
        .arg("--volley")
        .arg(&volley)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown peer"));
}

#[test]
fn chunking_pipelines_whole_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sink.jsonl");
    let sink = Sink::start(&["--log", log.to_str().unwrap()]);
    let report = blast_json(
        sink.addr,
        &[
            "--messages",
            "200",
            "--size",
            "3000",
            "--connections",
            "3",
            "--recipients",
            "2",
            "--chunking",
            "--pipeline-depth",
            "16",
        ],
    );
    sink.stop();
    assert_eq!(report["messages_accepted"], 200);
    assert_eq!(report["recipients_accepted"], 400);
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 200);
    assert!(lines.iter().all(|l| l["size_bytes"] == 3000));
    let ids: BTreeSet<&str> = lines
        .iter()
        .map(|l| l["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 200);

    // Refusals in the middle of a pipeline are counted by code and do not derail later ones.
    let sink = Sink::start(&["--tempfail-percent", "50"]);
    let report = blast_json(
        sink.addr,
        &[
            "--messages",
            "300",
            "--connections",
            "2",
            "--chunking",
            "--pipeline-depth",
            "8",
        ],
    );
    sink.stop();
    let c = codes(&report);
    assert_eq!(
        c.get("250").copied().unwrap_or(0) + c.get("450").copied().unwrap_or(0),
        300,
        "{c:?}"
    );
    assert!(c.get("450").copied().unwrap_or(0) > 90, "{c:?}");
}

#[test]
fn size_distribution_reaches_the_sink_with_the_right_mix() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sink.jsonl");
    let sink = Sink::start(&["--log", log.to_str().unwrap()]);
    let report = blast_json(
        sink.addr,
        &[
            "--messages",
            "2000",
            "--connections",
            "4",
            "--size-dist",
            "1024:70,10240:25,102400:5",
            "--seed",
            "11",
        ],
    );
    sink.stop();
    assert_eq!(report["messages_accepted"], 2000, "{report}");
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 2000);
    let mut by_size = BTreeMap::<u64, u64>::new();
    for line in &lines {
        *by_size
            .entry(line["size_bytes"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        by_size.keys().copied().collect::<Vec<_>>(),
        [1024, 10240, 102_400],
        "every message has one of the sizes: {by_size:?}"
    );
    let share = |size| by_size[&size] as f64 / 2000.0;
    assert!((share(1024) - 0.70).abs() < 0.04, "{by_size:?}");
    assert!((share(10240) - 0.25).abs() < 0.04, "{by_size:?}");
    assert!((share(102_400) - 0.05).abs() < 0.02, "{by_size:?}");
    // The reported mean is the mean of what the sink received.
    let total: u64 = by_size.iter().map(|(s, n)| s * n).sum();
    let mean = report["mean_message_bytes"].as_f64().unwrap();
    assert!((mean - total as f64 / 2000.0).abs() < 0.5, "{mean}");
    // The same seed gives the same mix.
    let sink = Sink::start(&[]);
    let again = blast_json(
        sink.addr,
        &[
            "--messages",
            "2000",
            "--connections",
            "3",
            "--size-dist",
            "1024:70,10240:25,102400:5",
            "--seed",
            "11",
        ],
    );
    sink.stop();
    assert_eq!(again["mean_message_bytes"], report["mean_message_bytes"]);
}

/// Blasts `messages` at recipients of `domain` through a `--provider-replies` sink.
fn provider_blast(domain: &str, sink_args: &[&str], messages: &str) -> Value {
    let mut args = vec!["--provider-replies"];
    args.extend_from_slice(sink_args);
    let sink = Sink::start(&args);
    let report = blast_json(
        sink.addr,
        &[
            "--messages",
            messages,
            "--connections",
            "1",
            "--domain-names",
            domain,
        ],
    );
    sink.stop();
    report
}

#[test]
fn provider_replies_imitate_gmail_yahoo_and_outlook() {
    let gmail = provider_blast("gmail.test", &[], "5");
    assert_eq!(gmail["messages_accepted"], 5, "{gmail}");
    let ok = gmail["reply_samples"]["250"].as_str().unwrap();
    assert!(ok.starts_with("250 2.0.0 OK  1"), "{ok}");
    assert!(ok.ends_with(" - gsmtp"), "{ok}");

    let outlook = provider_blast("outlook.test", &[], "3");
    let ok = outlook["reply_samples"]["250"].as_str().unwrap();
    assert!(ok.starts_with("250 2.6.0 <blast-"), "{ok}");
    assert!(ok.contains("Queued mail for delivery"), "{ok}");

    let yahoo = provider_blast("yahoo.test", &["--permfail-percent", "100"], "3");
    assert_eq!(codes(&yahoo), BTreeMap::from([("554".to_string(), 3)]));
    assert!(
        yahoo["reply_samples"]["554"]
            .as_str()
            .unwrap()
            .starts_with("554 5.7.9 ")
    );

    // Gmail's tempfail is a multi-line 421 that closes the connection: the rest stays unsent.
    let deferred = provider_blast("gmail.test", &["--tempfail-percent", "100"], "3");
    assert_eq!(codes(&deferred), BTreeMap::from([("421".to_string(), 1)]));
    assert_eq!(deferred["messages_unsent"], 2, "{deferred}");
    let text = deferred["reply_samples"]["421"].as_str().unwrap();
    assert!(text.starts_with("421-4.7.0 ["), "{text}");
    assert!(text.contains("Try again later"), "{text}");

    // Other domains keep the plain texts.
    let plain = provider_blast("d0.test", &[], "2");
    assert_eq!(plain["reply_samples"]["250"], "250 2.0.0 Ok: queued");
}

/// A running `volley serve`; killed on drop.
struct Volley(Child);

impl Drop for Volley {
    fn drop(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn starttls_and_auth_load_a_submission_listener() {
    let volley = Path::new(BIN).with_file_name("volley");
    assert!(
        volley.exists(),
        "build the workspace first: {} is missing",
        volley.display()
    );
    let mut hasher = Command::new(&volley)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hasher
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret:pass")
        .unwrap();
    let hashed = hasher.wait_with_output().unwrap();
    assert!(hashed.status.success());
    let hash = String::from_utf8(hashed.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2"), "{hash}");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sink.jsonl");
    let sink = Sink::start(&["--log", log.to_str().unwrap()]);
    let front = free_port();
    let config = format!(
        r#"[server]
hostname = "submit.volley.test"
cores = 1
spool_dir = "{spool}"
[spool]
fsync = false
[[listener]]
address = "127.0.0.1:{front}"
tls = "starttls"
auth = "required"
[[customer]]
name = "acme"
password_hash = '{hash}'
[routes]
"d0.test" = "{sink}"
[api]
address = "127.0.0.1:{api}"
"#,
        spool = dir.path().join("spool").display(),
        sink = sink.addr,
        api = free_port(),
    );
    let config_path = dir.path().join("volley.toml");
    std::fs::write(&config_path, config).unwrap();
    let _volley = Volley(
        Command::new(&volley)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("volley.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let front_addr = SocketAddr::from(([127, 0, 0, 1], front));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(front_addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "volley did not listen: {}",
            std::fs::read_to_string(dir.path().join("volley.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Without AUTH the listener refuses the mail.
    let refused = blast_json(front_addr, &["--messages", "2", "--starttls"]);
    assert_eq!(refused["messages_accepted"], 0, "{refused}");

    let report = blast_json(
        front_addr,
        &[
            "--messages",
            "200",
            "--connections",
            "4",
            "--starttls",
            "--auth",
            "acme:s3cret:pass",
        ],
    );
    assert_eq!(report["messages_accepted"], 200, "{report}");
    assert_eq!(report["connection_errors"], 0, "{report}");
    // Volley relays them all to the sink.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count();
        if n >= 200 {
            assert_eq!(n, 200);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {n} of 200 reached the sink"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(sink);
}
