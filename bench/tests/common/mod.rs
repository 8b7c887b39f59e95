//! What the integration tests of `volley-bench` share: a sink process on a free loopback port.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Starts `bin sink` on 127.0.0.1:0 with `extra` flags; returns the process and the address it
/// listens on (from its `listening on` line). Its stderr keeps being drained so it never blocks.
pub fn spawn_sink(bin: &str, extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(bin)
        .args([
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--stats-interval-s",
            "0",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the sink");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read sink stderr") > 0,
            "sink exited before listening"
        );
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            break addr.parse().expect("listening address");
        }
    };
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
    });
    (child, addr)
}
