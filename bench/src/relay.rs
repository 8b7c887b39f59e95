//! `volley-bench relay`: the same workload three ways on loopback, side by side:
//! 1. the ceiling: blast straight into the sink;
//! 2. Volley: blast into `volley serve` (spool durable), which relays to the sink;
//! 3. with `--peer postfix`: blast into a private Postfix instance that relays to the sink.
//!
//! Throughput through a relay is end to end: messages divided by the time from the first message
//! sent to the last one received by the sink. Every process is a child of this one and is stopped
//! at the end, also on failure.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sink_tally::SinkTally;

/// How the workload looks and where things run.
#[derive(Debug, Clone)]
pub struct RelayPlan {
    pub messages: u64,
    pub size_bytes: usize,
    pub recipients: u32,
    /// Recipient domains `d0.test` .. the recipients of a message are spread over, in turn.
    pub rcpt_domains: u32,
    pub connections: usize,
    /// Volley's `[[domain]] transactions_in_flight`.
    pub transactions_in_flight: u32,
    pub volley: PathBuf,
    pub volley_cores: usize,
    pub peer: Option<String>,
    pub peer_templates: PathBuf,
    pub out_dir: PathBuf,
    pub fsync: bool,
    pub timeout: Duration,
    /// TOML appended to Volley's generated configuration (e.g. shaping limits for an A/B run).
    pub volley_config_extra: Option<String>,
    /// Skip the ceiling run (A/B runs compare Volley with itself).
    pub skip_ceiling: bool,
    /// Extra headers (`NAME:VALUE`) blast adds to every message, e.g. `X-Volley-Customer`.
    pub blast_headers: Vec<String>,
    /// Blast leaves `SIZE=` out of MAIL.
    pub no_mail_size: bool,
    /// `blast --fixed-shares`.
    pub blast_fixed_shares: bool,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct RelayResult {
    pub name: String,
    /// Messages per second, end to end (for the ceiling: as blast measured).
    pub msg_per_s: f64,
    /// What blast measured at the front door (accept rate).
    pub accept_msg_per_s: f64,
    pub accept_p50_ms: f64,
    pub accept_p99_ms: f64,
    /// The accept latency distribution (blast's end-of-data reply latency), milliseconds.
    pub accept_latency_ms: LatencyPercentiles,
    /// Messages whose recipients all reached the sink.
    pub delivered: u64,
    /// Transactions the sink logged (a relay splitting messages by domain makes several each).
    pub sink_transactions: u64,
    /// Messages received by the sink per 100 ms interval, from the first message sent.
    pub timeline: Vec<u64>,
}

/// Percentiles of one run's accept latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencyPercentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyPercentiles {
    /// `(quantile label, fraction, value)` in order, for charts.
    fn points(&self) -> [(&'static str, f64, f64); 5] {
        [
            ("p50", 0.5, self.p50),
            ("p90", 0.9, self.p90),
            ("p99", 0.99, self.p99),
            ("p99.9", 0.999, self.p999),
            ("max", 1.0, self.max),
        ]
    }
}

#[derive(Debug, Serialize)]
pub struct RelayReport {
    pub machine: String,
    pub messages: u64,
    pub size_bytes: usize,
    pub recipients: u32,
    pub rcpt_domains: u32,
    pub connections: usize,
    pub fsync: bool,
    pub results: Vec<RelayResult>,
}

/// Kills the child when dropped, so a failed run leaves nothing behind.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first (the sink and Volley flush and exit 0), then SIGKILL.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("relay: {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens on {addr} after {timeout:?}"))
}

fn this_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find volley-bench itself: {e}"))
}

fn start_sink(port: u16, log: &Path) -> Result<Guard, String> {
    let child = Command::new(this_exe()?)
        .args(["sink", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--log")
        .arg(log)
        .args(["--stats-interval-s", "0", "--cpus", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the sink: {e}"))?;
    let guard = Guard {
        name: "sink",
        child,
    };
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )?;
    Ok(guard)
}

struct BlastRun {
    child: Child,
}

fn start_blast(plan: &RelayPlan, port: u16) -> Result<BlastRun, String> {
    let child = Command::new(this_exe()?)
        .args(["blast", "--to", &format!("127.0.0.1:{port}")])
        .args(["--messages", &plan.messages.to_string()])
        .args(["--size", &plan.size_bytes.to_string()])
        .args(["--recipients", &plan.recipients.to_string()])
        .args(["--domains", &plan.rcpt_domains.to_string()])
        .args(["--connections", &plan.connections.to_string()])
        .args(["--cpus", "1", "--json", "--progress-interval-s", "0"])
        .args(plan.no_mail_size.then_some("--no-mail-size"))
        .args(plan.blast_fixed_shares.then_some("--fixed-shares"))
        .args(
            plan.blast_headers
                .iter()
                .flat_map(|h| ["--header", h.as_str()]),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting blast: {e}"))?;
    Ok(BlastRun { child })
}

struct BlastFigures {
    msg_per_s: f64,
    latency_ms: LatencyPercentiles,
    accepted: u64,
}

fn finish_blast(run: BlastRun) -> Result<BlastFigures, String> {
    let output = run
        .child
        .wait_with_output()
        .map_err(|e| format!("blast: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("blast printed no JSON report: {e}"))?;
    let number = |path: &[&str]| {
        path.iter()
            .try_fold(&v, |v, k| v.get(*k))
            .and_then(|n| n.as_f64())
            .unwrap_or(0.0)
    };
    let ms = |key: &str| number(&["latency_us", "end_of_data_reply", key]) / 1000.0;
    Ok(BlastFigures {
        msg_per_s: number(&["accepted_per_s"]),
        latency_ms: LatencyPercentiles {
            p50: ms("p50"),
            p90: ms("p90"),
            p99: ms("p99"),
            p999: ms("p999"),
            max: ms("max"),
        },
        accepted: number(&["messages_accepted"]) as u64,
    })
}

/// Waits until the sink has logged the recipients of `expected` messages; samples every 100 ms.
/// The timeline counts messages whose recipients all arrived (recipients / `recipients`).
fn watch_sink(
    log: &Path,
    expected: u64,
    recipients: u32,
    started: Instant,
    timeout: Duration,
) -> Result<(f64, Vec<u64>), String> {
    let per_message = u64::from(recipients.max(1));
    let mut tally = SinkTally::new(log);
    let mut timeline = Vec::new();
    let mut last = 0;
    loop {
        let n = tally.recipients() / per_message;
        timeline.push(n - last.min(n));
        last = n;
        if n >= expected {
            return Ok((started.elapsed().as_secs_f64(), timeline));
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "only {n} of {expected} messages reached the sink in {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ceiling(plan: &RelayPlan) -> Result<RelayResult, String> {
    let port = free_port()?;
    let log = plan.out_dir.join("ceiling-sink.jsonl");
    let _ = std::fs::remove_file(&log);
    let _sink = start_sink(port, &log)?;
    let started = Instant::now();
    let figures = finish_blast(start_blast(plan, port)?)?;
    let (_, timeline) = watch_sink(
        &log,
        figures.accepted,
        plan.recipients,
        started,
        plan.timeout,
    )?;
    Ok(RelayResult {
        name: "ceiling (blast → sink)".into(),
        msg_per_s: figures.msg_per_s,
        accept_msg_per_s: figures.msg_per_s,
        accept_p50_ms: figures.latency_ms.p50,
        accept_p99_ms: figures.latency_ms.p99,
        accept_latency_ms: figures.latency_ms,
        delivered: figures.accepted,
        sink_transactions: SinkTally::new(&log).lines(),
        timeline,
    })
}

/// Runs blast into `front_port` while the relay forwards to the sink on `sink_port`.
fn through_relay(
    plan: &RelayPlan,
    name: &str,
    front_port: u16,
    log: &Path,
) -> Result<RelayResult, String> {
    let expected = plan.messages;
    let started = Instant::now();
    let blast = start_blast(plan, front_port)?;
    let (elapsed_s, timeline) = watch_sink(log, expected, plan.recipients, started, plan.timeout)?;
    let figures = finish_blast(blast)?;
    let mut tally = SinkTally::new(log);
    Ok(RelayResult {
        name: name.into(),
        msg_per_s: expected as f64 / elapsed_s,
        accept_msg_per_s: figures.msg_per_s,
        accept_p50_ms: figures.latency_ms.p50,
        accept_p99_ms: figures.latency_ms.p99,
        accept_latency_ms: figures.latency_ms,
        delivered: tally.recipients() / u64::from(plan.recipients.max(1)),
        sink_transactions: tally.lines(),
        timeline,
    })
}

fn volley(plan: &RelayPlan) -> Result<RelayResult, String> {
    let sink_port = free_port()?;
    let front_port = free_port()?;
    let api_port = free_port()?;
    let dir = plan.out_dir.join("volley");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = plan.out_dir.join("volley-sink.jsonl");
    let _ = std::fs::remove_file(&log);
    let config = format!(
        r#"[server]
hostname = "relay.volley.test"
cores = {cores}
spool_dir = "{spool}"
[spool]
fsync = {fsync}
[[listener]]
address = "127.0.0.1:{front_port}"
relay_networks = ["127.0.0.0/8"]
[[domain]]
match = "*"
max_connections = 50
max_messages_per_connection = 1000
transactions_in_flight = {transactions_in_flight}
[routes]
{routes}[api]
address = "127.0.0.1:{api_port}"
"#,
        routes = routes_to(plan.rcpt_domains, sink_port),
        cores = plan.volley_cores,
        transactions_in_flight = plan.transactions_in_flight,
        spool = dir.join("spool").display(),
        fsync = plan.fsync,
    ) + plan.volley_config_extra.as_deref().unwrap_or("");
    let config_path = dir.join("volley.toml");
    std::fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let _sink = start_sink(sink_port, &log)?;
    let child = Command::new(&plan.volley)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("volley.log"))
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        )
        .spawn()
        .map_err(|e| format!("starting {}: {e}", plan.volley.display()))?;
    let _volley = Guard {
        name: "volley",
        child,
    };
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], front_port)),
        Duration::from_secs(20),
    )?;
    through_relay(plan, "Volley (blast → volley → sink)", front_port, &log)
}

/// `[routes]` lines sending `d0.test` .. `d{domains-1}.test` to the sink.
fn routes_to(domains: u32, sink_port: u16) -> String {
    (0..domains.max(1))
        .map(|d| format!("\"d{d}.test\" = \"127.0.0.1:{sink_port}\"\n"))
        .collect()
}

/// A private Postfix instance from the team's peer templates, relaying to the sink.
fn postfix(plan: &RelayPlan) -> Result<RelayResult, String> {
    let sink_port = free_port()?;
    let front_port = free_port()?;
    let root = plan.out_dir.join("postfix");
    let etc = root.join("etc");
    for d in ["etc", "spool", "data", "log"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| format!("{d}: {e}"))?;
    }
    let substitute = |text: String| {
        text.replace("@ROOT@", &root.display().to_string())
            .replace("@SMTPD_PORT@", &front_port.to_string())
            .replace("@SINK_PORT@", &sink_port.to_string())
            .replace("@CONC@", &plan.connections.to_string())
            .replace("@PROCS@", "300")
    };
    for file in ["main.cf", "master.cf"] {
        let template = plan.peer_templates.join(format!("{file}.in"));
        let text = std::fs::read_to_string(&template)
            .map_err(|e| format!("{}: {e} (set --peer-templates)", template.display()))?;
        std::fs::write(etc.join(file), substitute(text)).map_err(|e| format!("{file}: {e}"))?;
    }
    let postfix = |args: &[&str]| {
        Command::new("postfix")
            .arg("-c")
            .arg(&etc)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("postfix (install it: apt-get install postfix): {e}"))
    };
    let _ = Command::new("chown")
        .args(["postfix:postfix"])
        .arg(root.join("data"))
        .status();
    postfix(&["check"])?;
    let log = plan.out_dir.join("postfix-sink.jsonl");
    let _ = std::fs::remove_file(&log);
    let _sink = start_sink(sink_port, &log)?;
    if !postfix(&["start"])?.success() {
        return Err("postfix did not start".into());
    }
    struct Stop<'a>(&'a dyn Fn(&[&str]) -> Result<std::process::ExitStatus, String>);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["stop"]);
        }
    }
    let _stop = Stop(&postfix);
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], front_port)),
        Duration::from_secs(20),
    )?;
    through_relay(plan, "Postfix (blast → postfix → sink)", front_port, &log)
}

pub fn run(plan: &RelayPlan) -> Result<RelayReport, String> {
    if let Some(other) = plan.peer.as_deref().filter(|p| *p != "postfix") {
        return Err(format!("unknown peer {other:?} (known: postfix)"));
    }
    std::fs::create_dir_all(&plan.out_dir)
        .map_err(|e| format!("{}: {e}", plan.out_dir.display()))?;
    let mut results = Vec::new();
    if !plan.skip_ceiling {
        results.push(ceiling(plan)?);
    }
    results.push(volley(plan)?);
    if plan.peer.is_some() {
        results.push(postfix(plan)?);
    }
    Ok(RelayReport {
        machine: machine(),
        messages: plan.messages,
        size_bytes: plan.size_bytes,
        recipients: plan.recipients,
        rcpt_domains: plan.rcpt_domains,
        connections: plan.connections,
        fsync: plan.fsync,
        results,
    })
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs, {model}")
}

impl RelayReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "relay: {} messages of {} bytes, {} recipient(s) in {} domain(s), {} connections, fsync {}; {}",
            self.messages,
            self.size_bytes,
            self.recipients,
            self.rcpt_domains.min(self.recipients),
            self.connections,
            if self.fsync { "on" } else { "OFF" },
            self.machine
        );
        let _ = writeln!(
            out,
            "{:<36} {:>12} {:>12} {:>10} {:>10} {:>10}",
            "run", "msg/s e2e", "accept/s", "p50 ms", "p99 ms", "vs ceiling"
        );
        let ceiling = self
            .results
            .iter()
            .find(|r| r.name.starts_with("ceiling"))
            .map(|r| r.msg_per_s);
        for r in &self.results {
            let versus = ceiling.map_or_else(
                || "-".to_string(),
                |c| format!("{:.1}%", 100.0 * r.msg_per_s / c.max(f64::MIN_POSITIVE)),
            );
            let _ = writeln!(
                out,
                "{:<36} {:>12.0} {:>12.0} {:>10.2} {:>10.2} {:>10}",
                r.name, r.msg_per_s, r.accept_msg_per_s, r.accept_p50_ms, r.accept_p99_ms, versus
            );
        }
        let volley = self.results.iter().find(|r| r.name.starts_with("Volley"));
        let peer = self
            .results
            .iter()
            .find(|r| !r.name.starts_with("Volley") && !r.name.starts_with("ceiling"));
        if let (Some(v), Some(p)) = (volley, peer) {
            let _ = writeln!(
                out,
                "Volley / {}: {:.1}x end to end",
                p.name.split(' ').next().unwrap_or("peer"),
                v.msg_per_s / p.msg_per_s.max(f64::MIN_POSITIVE)
            );
        }
        out
    }

    /// Throughput over time of every run, as an SVG line chart.
    pub fn to_svg(&self) -> String {
        let (w, h, pad) = (800.0, 400.0, 50.0);
        let max_len = self
            .results
            .iter()
            .map(|r| r.timeline.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let max_rate = self
            .results
            .iter()
            .flat_map(|r| r.timeline.iter())
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 10.0;
        let colors = ["#888888", "#d62728", "#1f77b4"];
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20">messages/s reaching the sink (100 ms buckets) over time; {} msgs of {} B</text>
<line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{y0}" stroke="black"/>
<text x="{pad}" y="{yl}">0 s</text><text x="{x1}" y="{yl}" text-anchor="end">{:.1} s</text><text x="5" y="{pad}">{:.0}/s</text>
"#,
            self.messages,
            self.size_bytes,
            max_len as f64 / 10.0,
            max_rate,
            y0 = h - pad,
            x1 = w - pad,
            yl = h - pad + 20.0,
        );
        for (i, r) in self.results.iter().enumerate() {
            let points: Vec<String> = r
                .timeline
                .iter()
                .enumerate()
                .map(|(t, n)| {
                    let x = pad + (w - 2.0 * pad) * t as f64 / (max_len - 1) as f64;
                    let y = (h - pad) - (h - 2.0 * pad) * (*n as f64 * 10.0) / max_rate;
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let color = colors[i % colors.len()];
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{color}">{}</text>"#,
                points.join(" "),
                w - pad - 300.0,
                pad + 15.0 * i as f64,
                r.name
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// The accept latency of every run as a percentile chart (a CDF on a "nines" scale): x is
    /// latency in ms on a log scale, y is the percentile, p50 at the bottom and max at the top.
    pub fn to_latency_svg(&self) -> String {
        let (w, h, pad) = (800.0, 400.0, 60.0);
        let values = || {
            self.results
                .iter()
                .flat_map(|r| r.accept_latency_ms.points().map(|(_, _, v)| v))
                .filter(|v| *v > 0.0)
        };
        // Whole decades around the data; latencies below 1 µs are drawn at 1 µs.
        let lo = values()
            .fold(f64::INFINITY, f64::min)
            .max(0.001)
            .log10()
            .floor();
        let hi = values().fold(0.001, f64::max).log10().ceil().max(lo + 1.0);
        let x_of = |ms: f64| pad + (w - 2.0 * pad) * (ms.max(0.001).log10() - lo) / (hi - lo);
        // Evenly spaced rows: p50, p90, p99, p99.9, max.
        let y_of = |row: usize| (h - pad) - (h - 2.0 * pad) * row as f64 / 4.0;
        let colors = ["#888888", "#d62728", "#1f77b4"];
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20">accept latency (end of DATA → reply) by percentile; {} msgs of {} B, {} connections</text>
<line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{y0}" stroke="black"/>
"#,
            self.messages,
            self.size_bytes,
            self.connections,
            y0 = h - pad,
            x1 = w - pad,
        );
        let mut decade = lo;
        while decade <= hi {
            let ms = 10f64.powf(decade);
            let x = x_of(ms);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{pad}" x2="{x:.1}" y2="{}" stroke="#dddddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{} ms</text>"##,
                h - pad,
                h - pad + 20.0,
                format_ms(ms)
            );
            decade += 1.0;
        }
        for (row, (label, _, _)) in LatencyPercentiles::default().points().iter().enumerate() {
            let y = y_of(row);
            let _ = writeln!(
                svg,
                r##"<line x1="{pad}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
                w - pad,
                pad - 5.0,
                y + 4.0
            );
        }
        for (i, r) in self.results.iter().enumerate() {
            let points: Vec<String> = r
                .accept_latency_ms
                .points()
                .iter()
                .enumerate()
                .map(|(row, (_, _, v))| format!("{:.1},{:.1}", x_of(*v), y_of(row)))
                .collect();
            let color = colors[i % colors.len()];
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{color}">{}</text>"#,
                points.join(" "),
                pad + 10.0,
                pad + 15.0 * i as f64,
                r.name
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// A decade tick label: `0.01`, `1`, `100`.
fn format_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        let digits = (-ms.log10()).ceil().max(0.0) as usize;
        format!("{ms:.digits$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, p50: f64) -> RelayResult {
        RelayResult {
            name: name.into(),
            msg_per_s: 1.0,
            accept_msg_per_s: 1.0,
            accept_p50_ms: p50,
            accept_p99_ms: p50 * 10.0,
            accept_latency_ms: LatencyPercentiles {
                p50,
                p90: p50 * 2.0,
                p99: p50 * 10.0,
                p999: p50 * 20.0,
                max: p50 * 50.0,
            },
            delivered: 1,
            sink_transactions: 1,
            timeline: vec![1, 2],
        }
    }

    #[test]
    fn every_recipient_domain_is_routed_to_the_sink() {
        assert_eq!(routes_to(1, 25), "\"d0.test\" = \"127.0.0.1:25\"\n");
        let ten = routes_to(10, 2525);
        assert_eq!(ten.lines().count(), 10);
        assert!(ten.contains("\"d9.test\" = \"127.0.0.1:2525\""));
    }

    #[test]
    fn latency_chart_has_one_curve_per_run() {
        let report = RelayReport {
            machine: "test".into(),
            messages: 10,
            size_bytes: 1024,
            recipients: 1,
            rcpt_domains: 1,
            connections: 2,
            fsync: true,
            results: vec![result("a", 0.2), result("b", 3.0), result("c", 0.0)],
        };
        let svg = report.to_latency_svg();
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains(">p99.9<") && svg.contains(">max<"));
        assert!(
            svg.contains(">0.1 ms<") && svg.contains(">1000 ms<"),
            "{svg}"
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_eq!(format_ms(0.01), "0.01");
    }
}
