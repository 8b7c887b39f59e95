//! Slows, then refuses, clients that keep failing AUTH: password guessing gets expensive fast, and an
//! honest client that mistyped once is not hurt. Per core; counters expire after a quiet window.

use std::collections::HashMap;
use std::net::IpAddr;

/// What to do with the next AUTH attempt from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleVerdict {
    Allow,
    /// Answer only after this long.
    Delay {
        delay_ms: u64,
    },
    /// Refuse AUTH outright (454 4.7.0) until the window passes.
    Refuse,
}

#[derive(Debug)]
pub struct AuthThrottle {
    failures: HashMap<IpAddr, (u32, u64)>,
    /// Failures before each answer is delayed.
    pub free_failures: u32,
    /// Failures before AUTH is refused.
    pub max_failures: u32,
    /// A client's count is forgotten this long after its last failure.
    pub window_s: u64,
    /// Clients tracked at most; beyond it the oldest entries are dropped.
    pub max_tracked_clients: usize,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        AuthThrottle {
            failures: HashMap::new(),
            free_failures: 3,
            max_failures: 10,
            window_s: 900,
            max_tracked_clients: 100_000,
        }
    }
}

impl AuthThrottle {
    pub fn check(&mut self, ip: IpAddr, now_s: u64) -> ThrottleVerdict {
        let Some(&(count, last_s)) = self.failures.get(&ip) else {
            return ThrottleVerdict::Allow;
        };
        if now_s.saturating_sub(last_s) >= self.window_s {
            self.failures.remove(&ip);
            return ThrottleVerdict::Allow;
        }
        if count >= self.max_failures {
            ThrottleVerdict::Refuse
        } else if count >= self.free_failures {
            // 1 s, 2 s, 4 s ... capped at 16 s.
            let steps = (count - self.free_failures).min(4);
            ThrottleVerdict::Delay {
                delay_ms: 1000 << steps,
            }
        } else {
            ThrottleVerdict::Allow
        }
    }

    pub fn record_failure(&mut self, ip: IpAddr, now_s: u64) {
        if self.failures.len() >= self.max_tracked_clients && !self.failures.contains_key(&ip) {
            let window = self.window_s;
            self.failures
                .retain(|_, (_, last)| now_s.saturating_sub(*last) < window);
            if self.failures.len() >= self.max_tracked_clients {
                return;
            }
        }
        let entry = self.failures.entry(ip).or_insert((0, now_s));
        entry.0 += 1;
        entry.1 = now_s;
    }

    pub fn record_success(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_then_refuses_then_forgets() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut t = AuthThrottle::default();
        for _ in 0..3 {
            assert_eq!(t.check(ip, 100), ThrottleVerdict::Allow);
            t.record_failure(ip, 100);
        }
        assert_eq!(t.check(ip, 100), ThrottleVerdict::Delay { delay_ms: 1000 });
        t.record_failure(ip, 101);
        assert_eq!(t.check(ip, 101), ThrottleVerdict::Delay { delay_ms: 2000 });
        for _ in 0..6 {
            t.record_failure(ip, 102);
        }
        assert_eq!(t.check(ip, 102), ThrottleVerdict::Refuse);
        assert_eq!(t.check(ip, 102 + 900), ThrottleVerdict::Allow);
    }

    #[test]
    fn success_clears() {
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        let mut t = AuthThrottle::default();
        for _ in 0..5 {
            t.record_failure(ip, 1);
        }
        t.record_success(ip);
        assert_eq!(t.check(ip, 1), ThrottleVerdict::Allow);
    }
}
