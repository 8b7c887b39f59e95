//! `volley-send-bench` end to end: every send mode moves exactly count*size bytes over loopback.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_volley-send-bench");
const COUNT: u64 = 50;
const SIZE: u64 = 102_400;

fn run(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two CPUs where there are two; otherwise both threads share CPU 0 (pinning must succeed).
    let receiver_cpu = if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        "1"
    } else {
        "0"
    };
    Command::new(BIN)
        .args(["--sender-cpu", "0", "--receiver-cpu", receiver_cpu])
        .args(["--map-mib", "8", "--dir"])
        .arg(dir.path())
        .args(extra)
        .output()
        .expect("run volley-send-bench")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn every_mode_delivers_every_byte() {
    let (count, size) = (COUNT.to_string(), SIZE.to_string());
    let out = run(&[
        "--count", &count, "--size", &size, "--rounds", "2", "--json",
    ]);
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let mut rounds: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for l in &lines {
        if l["kind"] == "round" {
            let mode = l["mode"].as_str().expect("mode").to_string();
            rounds.entry(mode).or_default().push(l);
        }
    }
    let modes: Vec<&str> = rounds.keys().map(String::as_str).collect();
    assert_eq!(
        modes,
        ["msg-zerocopy", "uring-send", "uring-send-zc", "write"]
    );
    for (mode, runs) in &rounds {
        assert_eq!(runs.len(), 2, "{mode}: one line per round");
        for r in runs {
            if r["supported"] == false {
                assert!(
                    mode != "write" && mode != "uring-send",
                    "{mode} must always be supported: {r}"
                );
                continue;
            }
            assert_eq!(r["bytes_sent"].as_u64(), Some(COUNT * SIZE), "{mode}: {r}");
            assert_eq!(
                r["bytes_received"].as_u64(),
                Some(COUNT * SIZE),
                "{mode}: {r}"
            );
            assert!(r["mib_per_s"].as_f64().is_some_and(|v| v > 0.0), "{r}");
            assert!(r["send_calls"].as_u64().is_some_and(|v| v >= COUNT), "{r}");
            if mode == "msg-zerocopy" || mode == "uring-send-zc" {
                // Every zerocopy send was reaped, and the copied share is a fraction.
                assert!(r["zc_completed"].as_u64() >= Some(COUNT), "{r}");
                let f = r["copied_fraction"].as_f64().expect("copied_fraction");
                assert!((0.0..=1.0).contains(&f), "{r}");
            } else {
                assert!(r["copied_fraction"].is_null(), "{r}");
            }
        }
    }
    let medians = lines.iter().filter(|l| l["kind"] == "median").count();
    assert_eq!(medians, 4, "one median line per mode");
}

#[test]
fn small_bodies_and_one_mode() {
    let out = run(&[
        "--count", "2000", "--size", "1000", "--mode", "write", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["mode"], "write");
    assert_eq!(lines[0]["bytes_received"].as_u64(), Some(2_000_000));
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = run(&["--size", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
}
