//! The process-wide recorder: one tally per core, each locked only by its own core once per
//! connection (uncontended) and by the control plane when it reads or closes the period; plus
//! the counts carried over from before a restart (`tls-rpt.json` in the spool directory).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crossbeam::utils::CachePadded;

use super::tally::{FailureKey, PolicyKey, Tally};

/// The file in the spool directory holding the open period's counts.
pub const STATE_FILE: &str = "tls-rpt.json";

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Saved {
    started_s: u64,
    tally: Tally,
}

pub struct Recorder {
    cores: Box<[CachePadded<Mutex<Tally>>]>,
    /// Counts loaded at start, and the period's start time (Unix seconds).
    carried: Mutex<Saved>,
}

fn now_s() -> u64 {
    crate::clock::unix_s()
}

impl Recorder {
    pub fn new(cores: usize) -> Recorder {
        Recorder {
            cores: (0..cores.max(1))
                .map(|_| CachePadded::new(Mutex::new(Tally::default())))
                .collect(),
            carried: Mutex::new(Saved {
                started_s: now_s(),
                tally: Tally::default(),
            }),
        }
    }

    fn core(&self, core: usize) -> &Mutex<Tally> {
        &self.cores[core.min(self.cores.len() - 1)]
    }

    /// One session of `core` under `policy` of `domain`: met (`failure` None) or failed.
    pub fn record(
        &self,
        core: usize,
        domain: &str,
        policy: &PolicyKey,
        failure: Option<FailureKey>,
    ) {
        let Ok(mut tally) = self.core(core).lock() else {
            return;
        };
        match failure {
            None => tally.success(domain, policy),
            Some(f) => tally.failure(domain, policy, f),
        }
    }

    /// When the open period started (Unix seconds).
    pub fn started_s(&self) -> u64 {
        self.carried.lock().map_or(0, |c| c.started_s)
    }

    /// The open period's counts so far, and its start (Unix seconds).
    pub fn snapshot(&self) -> (u64, Tally) {
        let (started, mut all) = match self.carried.lock() {
            Ok(c) => (c.started_s, c.tally.clone()),
            Err(_) => (now_s(), Tally::default()),
        };
        for core in self.cores.iter() {
            if let Ok(t) = core.lock() {
                all.merge(t.clone());
            }
        }
        (started, all)
    }

    /// Closes the period: its start, end and counts; a new period starts now.
    pub fn close(&self) -> (u64, u64, Tally) {
        let end = now_s();
        let (started, mut all) = match self.carried.lock() {
            Ok(mut c) => {
                let started = c.started_s;
                c.started_s = end;
                (started, std::mem::take(&mut c.tally))
            }
            Err(_) => (end, Tally::default()),
        };
        for core in self.cores.iter() {
            if let Ok(mut t) = core.lock() {
                all.merge(std::mem::take(&mut *t));
            }
        }
        (started, end, all)
    }

    /// Writes the open period to `dir/tls-rpt.json` (write then rename). Blocking: call off the
    /// reactor.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let (started_s, tally) = self.snapshot();
        let text = serde_json::to_vec(&Saved { started_s, tally })?;
        let path = dir.join(STATE_FILE);
        let tmp: PathBuf = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }

    /// Loads the counts saved before a restart into the open period. Blocking: call at start.
    pub fn load(&self, dir: &Path) -> std::io::Result<()> {
        let text = match std::fs::read(dir.join(STATE_FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let saved: Saved = serde_json::from_slice(&text)?;
        if let Ok(mut c) = self.carried.lock() {
            c.started_s = c.started_s.min(saved.started_s);
            c.tally.merge(saved.tally);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tally::sts_policy;
    use super::*;

    #[test]
    fn cores_merge_close_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("volley-tlsrpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Recorder::new(2);
        r.record(0, "example.test", &sts_policy(), None);
        r.record(1, "example.test", &sts_policy(), None);
        r.save(&dir).unwrap();
        let again = Recorder::new(2);
        again.load(&dir).unwrap();
        again.record(1, "example.test", &sts_policy(), None);
        let (_, _, closed) = again.close();
        assert_eq!(closed.domains["example.test"][0].1.successful, 3);
        assert!(again.snapshot().1.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
