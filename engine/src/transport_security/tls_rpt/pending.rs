//! Report POSTs that failed, kept for a retry: bounded in count and bytes, each retried with a
//! doubling wait from `RETRY_FIRST_S` to `RETRY_S_MAX` and dropped `PENDING_AGE_S_MAX` after its
//! first failure. Serializable: core 0 keeps them in `spool_dir/tls-rpt-posts.json`.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// The file in the spool directory holding the POSTs waiting for a retry.
pub const PENDING_FILE: &str = "tls-rpt-posts.json";
/// Most POSTs kept; a failure beyond it is dropped (logged).
pub const PENDING_POSTS_MAX: usize = 256;
/// Most report bytes (gzip) kept in all.
pub const PENDING_BYTES_MAX: usize = 16 << 20;
/// A report not delivered this long after its first failure is dropped.
pub const PENDING_AGE_S_MAX: u64 = 86_400;
/// The wait before the first retry, doubled after each failure up to `RETRY_S_MAX`.
pub const RETRY_FIRST_S: u64 = 60;
pub const RETRY_S_MAX: u64 = 3_600;

/// One report waiting to be POSTed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPost {
    pub url: String,
    /// The gzip report, base64.
    body: String,
    /// When the first POST failed (Unix seconds).
    pub first_failed_s: u64,
    /// Failed POSTs so far.
    pub attempts: u32,
    /// Not before this time (Unix seconds).
    pub next_at_s: u64,
}

impl PendingPost {
    /// The gzip report.
    pub fn body(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPosts {
    posts: Vec<PendingPost>,
}

fn backoff_s(attempts: u32) -> u64 {
    RETRY_FIRST_S
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(16))
        .min(RETRY_S_MAX)
}

impl PendingPosts {
    pub fn len(&self) -> usize {
        self.posts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.posts.is_empty()
    }

    fn bytes(&self) -> usize {
        self.posts.iter().map(|p| p.body.len()).sum()
    }

    fn keep(&mut self, post: PendingPost) -> bool {
        if self.posts.len() >= PENDING_POSTS_MAX
            || self.bytes().saturating_add(post.body.len()) > PENDING_BYTES_MAX
        {
            return false;
        }
        self.posts.push(post);
        true
    }

    /// A first POST of `body` to `url` failed at `now_s`: kept for a retry, or false when a
    /// bound is reached (the report is dropped).
    pub fn failed(&mut self, url: &str, body: &[u8], now_s: u64) -> bool {
        self.keep(PendingPost {
            url: url.to_string(),
            body: STANDARD.encode(body),
            first_failed_s: now_s,
            attempts: 1,
            next_at_s: now_s.saturating_add(backoff_s(1)),
        })
    }

    /// A retry failed again: kept with a longer wait, or false once too old (dropped).
    pub fn failed_again(&mut self, mut post: PendingPost, now_s: u64) -> bool {
        post.attempts = post.attempts.saturating_add(1);
        post.next_at_s = now_s.saturating_add(backoff_s(post.attempts));
        if post.next_at_s > post.first_failed_s.saturating_add(PENDING_AGE_S_MAX) {
            return false;
        }
        self.keep(post)
    }

    /// Whether a POST is due at `now_s`.
    pub fn any_due(&self, now_s: u64) -> bool {
        self.posts.iter().any(|p| p.next_at_s <= now_s)
    }

    /// Takes the POSTs due at `now_s`; drops those past `PENDING_AGE_S_MAX` (returned apart, for
    /// the log).
    pub fn take_due(&mut self, now_s: u64) -> (Vec<PendingPost>, Vec<PendingPost>) {
        let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.posts)
            .into_iter()
            .partition(|p| now_s > p.first_failed_s.saturating_add(PENDING_AGE_S_MAX));
        let (due, later) = kept.into_iter().partition(|p| p.next_at_s <= now_s);
        self.posts = later;
        (due, old)
    }

    /// Writes them to `dir/tls-rpt-posts.json` (write, fsync, rename). Blocking.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = dir.join(format!("{PENDING_FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(self)?)?;
        file.sync_all()?;
        std::fs::rename(tmp, dir.join(PENDING_FILE))
    }

    /// Reads them back (none when the file is missing). Blocking.
    pub fn load(dir: &Path) -> std::io::Result<PendingPosts> {
        let text = match std::fs::read(dir.join(PENDING_FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let mut read: PendingPosts = serde_json::from_slice(&text)?;
        // The bounds hold whatever the file says.
        let mut kept = PendingPosts::default();
        for post in read.posts.drain(..) {
            kept.keep(post);
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retried_with_a_doubling_wait_then_dropped_after_a_day() {
        let mut p = PendingPosts::default();
        assert!(p.failed("https://r.test/", b"report", 1_000));
        assert!(!p.any_due(1_000 + RETRY_FIRST_S - 1));
        assert!(p.any_due(1_000 + RETRY_FIRST_S));
        let (due, old) = p.take_due(1_000 + RETRY_FIRST_S);
        assert!(old.is_empty() && p.is_empty());
        assert_eq!(due[0].body(), b"report");
        let mut post = due[0].clone();
        let mut now = 1_000 + RETRY_FIRST_S;
        let mut waits = Vec::new();
        while p.failed_again(post.clone(), now) {
            let (mut due, _) = p.take_due(p.posts[0].next_at_s);
            waits.push(due[0].next_at_s - now);
            now = due[0].next_at_s;
            post = due.remove(0);
        }
        assert_eq!(waits[..3], [120, 240, 480]);
        assert_eq!(*waits.last().unwrap(), RETRY_S_MAX);
        assert!(now <= 1_000 + PENDING_AGE_S_MAX, "dropped within a day");
        assert!(now + RETRY_S_MAX > 1_000 + PENDING_AGE_S_MAX - RETRY_S_MAX);
    }

    #[test]
    fn bounded_and_expired() {
        let mut p = PendingPosts::default();
        for i in 0..PENDING_POSTS_MAX + 2 {
            let kept = p.failed("https://r.test/", b"x", i as u64);
            assert_eq!(kept, i < PENDING_POSTS_MAX);
        }
        let big = vec![0u8; PENDING_BYTES_MAX];
        let mut q = PendingPosts::default();
        assert!(!q.failed("https://r.test/", &big, 0), "over the byte bound");
        let (due, old) = p.take_due(PENDING_AGE_S_MAX + 2);
        assert_eq!(old.len(), 2, "the first two failed more than a day ago");
        assert_eq!(due.len(), PENDING_POSTS_MAX - 2);
    }

    #[test]
    fn survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("volley-pending-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(PendingPosts::load(&dir).unwrap().is_empty());
        let mut p = PendingPosts::default();
        p.failed("https://r.test/a", &[1, 2, 3], 5);
        p.save(&dir).unwrap();
        let back = PendingPosts::load(&dir).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.posts[0].body(), [1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
