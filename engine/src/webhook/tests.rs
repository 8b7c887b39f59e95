//! The senders against a small HTTP/1.1 receiver on loopback, in process.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    signature: Option<String>,
    events_header: Option<String>,
    body: Vec<u8>,
    status: u16,
}

/// Answers each POST with the next status of `plan` (200 once it is empty), keeps what it saw.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    fn start(plan: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(plan.iter().copied().collect::<VecDeque<u16>>()));
        let (s, p) = (seen.clone(), plan.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (s, p) = (s.clone(), p.clone());
                std::thread::spawn(move || serve(conn, s, p));
            }
        });
        Receiver { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The ids of the events in batches answered 2xx.
    fn taken_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        for s in self.seen().iter().filter(|s| s.status == 200) {
            let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            for e in v.as_array().unwrap() {
                ids.push(e["event_id"].as_u64().unwrap());
            }
        }
        ids
    }
}

fn serve(conn: std::net::TcpStream, seen: Arc<Mutex<Vec<Seen>>>, plan: Arc<Mutex<VecDeque<u16>>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            headers.push(line.trim_end().to_string());
        }
        let header = |name: &str| {
            headers.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = plan.lock().unwrap().pop_front().unwrap_or(200);
        seen.lock().unwrap().push(Seen {
            signature: header("x-volley-signature"),
            events_header: header("x-volley-events"),
            body,
            status,
        });
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 4\r\n\r\nnope");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn config(extra: &str) -> Config {
    Config::parse(&format!(
        "[[listener]]\naddress = \"127.0.0.1:2525\"\nrelay_networks = [\"127.0.0.0/8\"]\n{extra}"
    ))
    .unwrap()
}

fn webhook(name: &str, url: &str, more: &str) -> String {
    format!("[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\n{more}\n")
}

/// Journal lines as the accounting log writes them.
fn events(from: u64, n: u64, kind: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for i in from..from + n {
        out.extend_from_slice(
            format!("{{\"type\":\"{kind}\",\"recipient\":\"r{i}@example.test\"}}\n").as_bytes(),
        );
    }
    out
}

struct Running {
    webhooks: Arc<Webhooks>,
    stop: Arc<AtomicBool>,
}

impl Running {
    fn start(spool: &Path, config: &Config) -> Running {
        let webhooks = Webhooks::open(spool, config).unwrap().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let settings = config.clone();
        webhooks
            .start(config, |name| {
                let (settings, stop, name) = (settings.clone(), stop.clone(), name.to_string());
                SenderContext {
                    settings: Box::new(move || {
                        settings.webhooks.iter().find(|w| w.name() == name).cloned()
                    }),
                    stopping: Box::new(move || stop.load(Ordering::Relaxed)),
                }
            })
            .unwrap();
        Running { webhooks, stop }
    }

    fn stop(self) -> Arc<Webhooks> {
        self.stop.store(true, Ordering::Relaxed);
        self.webhooks.join();
        self.webhooks
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_event_arrives_signed_in_batches_and_refused_batches_come_again() {
    let spool = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&[500, 503]);
    let config = config(&webhook(
        "cp",
        &receiver.url(),
        "secret = \"s3cret\"\nbatch_max_events = 5",
    ));
    let running = Running::start(spool.path(), &config);
    let journal = running.webhooks.journal().clone();
    journal.append(&events(1, 13, "delivery"));
    journal.append(&events(14, 10, "reception"));
    wait_for("23 events taken", Duration::from_secs(20), || {
        receiver.taken_ids().len() >= 23
    });
    let webhooks = running.stop();
    assert_eq!(receiver.taken_ids(), (1..=23).collect::<Vec<u64>>());
    let seen = receiver.seen();
    // The refused batch came again, the same.
    assert_eq!(
        (seen[0].status, seen[1].status, seen[2].status),
        (500, 503, 200)
    );
    assert_eq!(seen[0].body, seen[2].body);
    for s in &seen {
        assert_eq!(
            s.signature.as_deref(),
            Some(signature("s3cret", &s.body).as_str())
        );
        let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        let n = v.as_array().unwrap().len();
        assert!((1..=5).contains(&n));
        assert_eq!(s.events_header.as_deref(), Some(n.to_string().as_str()));
        assert_eq!(
            v[0]["recipient"],
            format!("r{}@example.test", v[0]["event_id"])
        );
    }
    let state = &webhooks.states()[0];
    assert_eq!(state.lag(&journal), 0);
    assert_eq!(state.post_failures.load(Ordering::Relaxed), 2);
    assert_eq!(state.events_sent.load(Ordering::Relaxed), 23);
    assert!(
        state
            .last_error
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .1
            .contains("HTTP 503")
    );
    // Saved at stop; a new start carries on from there and sends nothing again.
    let dir = spool.path().join("webhooks");
    assert_eq!(position::load(&dir, "cp").unwrap(), Some(24));
    drop(webhooks);
    let running = Running::start(spool.path(), &config);
    running.webhooks.journal().append(&events(24, 2, "bounce"));
    wait_for("2 more events", Duration::from_secs(10), || {
        receiver.taken_ids().len() >= 25
    });
    running.stop();
    assert_eq!(receiver.taken_ids(), (1..=25).collect::<Vec<u64>>());
}

#[test]
fn a_webhook_gets_only_its_types_and_moves_past_the_others() {
    let spool = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&[]);
    let config = config(&webhook(
        "bounces",
        &receiver.url(),
        "events = [\"bounce\"]",
    ));
    let running = Running::start(spool.path(), &config);
    let journal = running.webhooks.journal().clone();
    journal.append(&events(1, 4, "delivery"));
    journal.append(&events(5, 2, "bounce"));
    journal.append(&events(7, 3, "reception"));
    wait_for("lag 0", Duration::from_secs(10), || {
        running.webhooks.states()[0].lag(&journal) == 0
    });
    let webhooks = running.stop();
    assert_eq!(receiver.taken_ids(), [5, 6]);
    // No signature without a secret.
    assert!(receiver.seen().iter().all(|s| s.signature.is_none()));
    assert_eq!(
        position::load(&spool.path().join("webhooks"), "bounces").unwrap(),
        Some(10)
    );
    let status = webhooks.status(&config);
    assert_eq!(status["webhooks"][0]["name"], "bounces");
    assert_eq!(status["webhooks"][0]["lag_events"], 0);
    assert_eq!(status["webhooks"][0]["events_sent"], 2);
    assert!(
        status["webhooks"][0]["last_success_unix_ms"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(status["journal"]["next_event_id"], 10);
}

#[test]
fn a_new_webhook_starts_at_the_end_and_a_removed_one_leaves_nothing() {
    let spool = tempfile::tempdir().unwrap();
    let fast = Receiver::start(&[]);
    let config1 = config(&webhook("fast", &fast.url(), ""));
    let running = Running::start(spool.path(), &config1);
    running.webhooks.journal().append(&events(1, 5, "delivery"));
    wait_for("5 events", Duration::from_secs(10), || {
        fast.taken_ids().len() == 5
    });
    drop(running.stop());
    // A second webhook is added: it gets what comes from now on; the first its backlog.
    let slow = Receiver::start(&[]);
    let config2 = config(&(webhook("fast", &fast.url(), "") + &webhook("slow", &slow.url(), "")));
    let webhooks = Webhooks::open(spool.path(), &config2).unwrap().unwrap();
    let positions: Vec<u64> = webhooks.states().iter().map(|s| s.position()).collect();
    assert_eq!(positions, [6, 6]);
    drop(webhooks);
    // Removing it removes its position; removing all removes the journal.
    let webhooks = Webhooks::open(spool.path(), &config1).unwrap().unwrap();
    assert_eq!(webhooks.states().len(), 1);
    assert!(!spool.path().join("webhooks/slow.pos").exists());
    drop(webhooks);
    assert!(Webhooks::open(spool.path(), &config("")).unwrap().is_none());
    assert!(!spool.path().join("events").exists());
    assert!(!spool.path().join("webhooks/fast.pos").exists());
}

#[test]
fn metrics_name_each_webhook() {
    let spool = tempfile::tempdir().unwrap();
    let config = config(
        "[[webhook]]\nurl = \"http://127.0.0.1:9/a\\\"b\"\n[[webhook]]\nname = \"cp\"\nurl = \"https://cp.example/e\"\n",
    );
    let webhooks = Webhooks::open(spool.path(), &config).unwrap().unwrap();
    webhooks.journal().append(&events(1, 3, "delivery"));
    let text = webhooks.render_metrics();
    assert!(
        text.contains("volley_webhook_lag_events{webhook=\"cp\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("volley_webhook_lag_events{webhook=\"http://127.0.0.1:9/a\\\"b\"} 3\n"),
        "{text}"
    );
    for name in [
        "volley_webhook_posts_total",
        "volley_webhook_post_failures_total",
        "volley_webhook_events_sent_total",
        "volley_webhook_skipped_events_total",
        "volley_webhook_journal_bytes",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
    }
}
