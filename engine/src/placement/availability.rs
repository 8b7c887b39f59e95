//! Which VMTAs may take mail: those taken out of their pools by the API (until enabled again) or
//! automatically when their source address cannot be bound (for `BIND_FAILURE_RETRY_S`, then tried
//! again) or when they are refused everywhere (`[shaping] vmta_refusal_*`: refused by several
//! distinct next hops within a window, none of its mail delivered meanwhile). Refusals count per
//! next hop, not per domain: a smarthost that is down refuses every domain routed to it, and that
//! is one receiver saying no, not many. A pool skips a disabled VMTA when it picks one for a
//! message, unless every VMTA of the pool is disabled. Delivery reports what it sees
//! (`delivery::vmta_status`); placement reads the result.
//!
//! The board is process-wide; a core reads it through its own cached copy, refreshed only when the
//! board's version changes or an automatic disable runs out, so placing a message costs one atomic
//! load, not a lock.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::ShapingSection;

/// How long a VMTA whose source address failed to bind stays out before it is tried again.
pub const BIND_FAILURE_RETRY_S: u64 = 60;

/// Characters of the last refusal's reply kept in the reason (the server's text is untrusted).
const REFUSAL_TEXT_CHARS_MAX: usize = 200;

/// Why and until when a VMTA is out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    pub reason: String,
    pub since_s: u64,
    /// `None` = until enabled by the API.
    pub until_s: Option<u64>,
}

/// When a VMTA counts as refused everywhere, and for how long it is then out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLimits {
    /// Distinct next hops refusing it (`vmta_refusal_domains`); 0 = never take a VMTA out for
    /// refusals.
    pub domains: u32,
    /// The window the refusals are counted in, in seconds.
    pub window_s: u64,
    /// How long it stays out, in seconds.
    pub out_s: u64,
}

impl RefusalLimits {
    pub fn from_config(shaping: &ShapingSection) -> RefusalLimits {
        RefusalLimits {
            domains: shaping.vmta_refusal_domains,
            window_s: shaping.vmta_refusal_window_s,
            out_s: shaping.vmta_refusal_out_s,
        }
    }
}

/// Every disabled VMTA, and the recent refusals of those that are not (yet).
#[derive(Debug, Default)]
pub struct VmtaBoard {
    version: AtomicU64,
    /// Locked on a change, and by a core when the version moved: never per message.
    disabled: Mutex<HashMap<String, Disabled>>,
    /// VMTA -> (next hop, last refusal at, in seconds) for its distinct refusing next hops in the
    /// window (at most `vmta_refusal_domains` each, which validation caps). Locked per refusal,
    /// never per delivery.
    refusals: Mutex<HashMap<String, Vec<(String, u64)>>>,
    /// How many VMTAs have refusals recorded: a delivery locks only when not 0.
    refused_vmtas: AtomicU64,
    /// Refusals recorded so far: a core tells the board about a delivery again, even within the
    /// same second, when a refusal came since it last did.
    refusals_recorded: AtomicU64,
}

impl VmtaBoard {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Disabled>> {
        match self.disabled.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes `name` out of its pools until `until_s` (or until enabled).
    pub fn disable(&self, name: &str, reason: &str, now_s: u64, until_s: Option<u64>) {
        self.map().insert(
            name.to_string(),
            Disabled {
                reason: reason.to_string(),
                since_s: now_s,
                until_s,
            },
        );
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Puts `name` back; returns whether it was disabled.
    pub fn enable(&self, name: &str) -> bool {
        let was = self.map().remove(name).is_some();
        self.version.fetch_add(1, Ordering::AcqRel);
        was
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(String, u64)>>> {
        match self.refusals.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records that `next_hop` refused a connection from `vmta` (`what`: the reply or error). When
    /// that makes `limits.domains` distinct next hops within the window, with none of its mail
    /// delivered since, it is taken out for `limits.out_s`; the entry is returned.
    pub fn record_refusal(
        &self,
        vmta: &str,
        next_hop: &str,
        what: &str,
        now_s: u64,
        limits: RefusalLimits,
    ) -> Option<Disabled> {
        if limits.domains == 0 {
            return None;
        }
        let already_out = self
            .map()
            .get(vmta)
            .is_some_and(|d| d.until_s.is_none_or(|u| u > now_s));
        if already_out {
            return None;
        }
        let mut refusals = self.refusals();
        self.refusals_recorded.fetch_add(1, Ordering::AcqRel);
        let hops = refusals.entry(vmta.to_string()).or_default();
        let oldest_s = now_s.saturating_sub(limits.window_s);
        hops.retain(|(h, at_s)| *at_s > oldest_s && h != next_hop);
        hops.push((next_hop.to_string(), now_s));
        if hops.len() < limits.domains as usize {
            self.refused_vmtas
                .store(refusals.len() as u64, Ordering::Release);
            return None;
        }
        let names: Vec<&str> = hops.iter().map(|(h, _)| h.as_str()).collect();
        let what: String = what.chars().take(REFUSAL_TEXT_CHARS_MAX).collect();
        let reason = format!(
            "refused everywhere: {} next hops refused it within {} s ({}); last: {what}",
            names.len(),
            limits.window_s,
            names.join(", ")
        );
        refusals.remove(vmta);
        self.refused_vmtas
            .store(refusals.len() as u64, Ordering::Release);
        let until_s = now_s.saturating_add(limits.out_s);
        self.disable(vmta, &reason, now_s, Some(until_s));
        Some(Disabled {
            reason,
            since_s: now_s,
            until_s: Some(until_s),
        })
    }

    /// Mail from `vmta` was delivered: its refusals are forgotten.
    /// One atomic load when no VMTA has refusals recorded.
    pub fn record_success(&self, vmta: &str) {
        if !self.has_refusals() {
            return;
        }
        let mut refusals = self.refusals();
        if refusals.remove(vmta).is_some() {
            self.refused_vmtas
                .store(refusals.len() as u64, Ordering::Release);
        }
    }

    /// Whether any VMTA has refusals recorded (one atomic load).
    pub fn has_refusals(&self) -> bool {
        self.refused_vmtas.load(Ordering::Acquire) != 0
    }

    /// The distinct next hops that refused `vmta` recently (for tests and diagnostics).
    pub fn refusing_hops(&self, vmta: &str) -> usize {
        self.refusals().get(vmta).map_or(0, Vec::len)
    }

    /// The VMTAs disabled at `now_s`, with their entries.
    pub fn list(&self, now_s: u64) -> Vec<(String, Disabled)> {
        let mut list: Vec<_> = self
            .map()
            .iter()
            .filter(|(_, d)| d.until_s.is_none_or(|u| u > now_s))
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

/// One core's copy of the board.
#[derive(Debug, Default)]
pub struct VmtaView {
    inner: RefCell<ViewState>,
    /// VMTA -> (the second this core last told the board one of its transactions delivered, the
    /// board's `refusals_recorded` then).
    reported_success: RefCell<HashMap<String, (u64, u64)>>,
}

#[derive(Debug, Default)]
struct ViewState {
    version: Option<u64>,
    /// The earliest end of an automatic disable: the view refreshes then.
    next_expiry_s: Option<u64>,
    disabled: HashSet<String>,
}

impl VmtaView {
    /// A transaction of `name` delivered at `now_s`: tells the board (which forgets the VMTA's
    /// refusals) when it has refusals recorded, at most once a second per VMTA from this core unless
    /// a refusal came since.
    pub fn got_through(&self, board: &VmtaBoard, name: &str, now_s: u64) {
        if !board.has_refusals() {
            return;
        }
        let recorded = board.refusals_recorded.load(Ordering::Acquire);
        let mut reported = self.reported_success.borrow_mut();
        match reported.get_mut(name) {
            Some(last) if *last == (now_s, recorded) => return,
            Some(last) => *last = (now_s, recorded),
            None => {
                reported.insert(name.to_string(), (now_s, recorded));
            }
        }
        board.record_success(name);
    }

    /// Whether `name` is out of its pools at `now_s`.
    pub fn is_disabled(&self, board: &VmtaBoard, name: &str, now_s: u64) -> bool {
        let version = board.version();
        let stale = {
            let s = self.inner.borrow();
            s.version != Some(version) || s.next_expiry_s.is_some_and(|t| t <= now_s)
        };
        if stale {
            let list = board.list(now_s);
            let mut s = self.inner.borrow_mut();
            s.version = Some(version);
            s.next_expiry_s = list.iter().filter_map(|(_, d)| d.until_s).min();
            s.disabled = list.into_iter().map(|(n, _)| n).collect();
        }
        self.inner.borrow().disabled.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_enable_and_expiry() {
        let board = VmtaBoard::default();
        let view = VmtaView::default();
        assert!(!view.is_disabled(&board, "a", 0));
        board.disable("a", "by the operator", 0, None);
        board.disable("b", "bind failed", 0, Some(60));
        assert!(view.is_disabled(&board, "a", 10));
        assert!(view.is_disabled(&board, "b", 59));
        assert!(
            !view.is_disabled(&board, "b", 60),
            "automatic disable ran out"
        );
        assert!(board.enable("a"));
        assert!(!view.is_disabled(&board, "a", 61));
        assert!(!board.enable("a"));
    }

    const LIMITS: RefusalLimits = RefusalLimits {
        domains: 3,
        window_s: 300,
        out_s: 600,
    };

    #[test]
    fn refused_at_enough_distinct_next_hops_takes_the_vmta_out_for_a_while() {
        let board = VmtaBoard::default();
        let view = VmtaView::default();
        assert!(
            board
                .record_refusal("v", "a.test", "554", 0, LIMITS)
                .is_none()
        );
        assert!(
            board
                .record_refusal("v", "a.test", "554", 1, LIMITS)
                .is_none(),
            "the same next hop again counts once"
        );
        assert!(
            board
                .record_refusal("v", "b.test", "554", 2, LIMITS)
                .is_none()
        );
        assert_eq!(board.refusing_hops("v"), 2);
        assert!(!view.is_disabled(&board, "v", 2));
        let out = board
            .record_refusal("v", "c.test", "554 5.7.1 go away", 3, LIMITS)
            .expect("third domain");
        assert_eq!(out.until_s, Some(603));
        assert!(out.reason.contains("refused everywhere"), "{}", out.reason);
        assert!(
            out.reason.contains("a.test, b.test, c.test"),
            "{}",
            out.reason
        );
        assert!(out.reason.contains("554 5.7.1 go away"), "{}", out.reason);
        assert!(view.is_disabled(&board, "v", 4));
        assert_eq!(board.list(4)[0].1.reason, out.reason);
        assert!(
            board
                .record_refusal("v", "d.test", "554", 5, LIMITS)
                .is_none(),
            "already out: not counted again"
        );
        assert_eq!(board.refusing_hops("v"), 0);
        assert!(!view.is_disabled(&board, "v", 603), "back by itself");
    }

    #[test]
    fn a_smarthost_refusing_many_domains_counts_once() {
        // Every domain routed to one smarthost has the same next hop (`hops::select`).
        let board = VmtaBoard::default();
        for (at_s, _domain) in ["a.test", "b.test", "c.test", "d.test"].iter().enumerate() {
            assert!(
                board
                    .record_refusal("v", "relay.test:25", "421", at_s as u64, LIMITS)
                    .is_none()
            );
        }
        assert_eq!(board.refusing_hops("v"), 1);
        assert!(
            board.list(4).is_empty(),
            "one receiver saying no is not everywhere"
        );
    }

    #[test]
    fn refusals_older_than_the_window_do_not_count() {
        let board = VmtaBoard::default();
        board.record_refusal("v", "a.test", "554", 0, LIMITS);
        board.record_refusal("v", "b.test", "554", 100, LIMITS);
        assert!(
            board
                .record_refusal("v", "c.test", "554", 300, LIMITS)
                .is_none()
        );
        assert_eq!(board.refusing_hops("v"), 2, "a.test fell out of the window");
        assert!(
            board
                .record_refusal("v", "a.test", "554", 301, LIMITS)
                .is_some()
        );
    }

    #[test]
    fn a_delivery_forgets_the_refusals() {
        let board = VmtaBoard::default();
        board.record_success("v");
        board.record_refusal("v", "a.test", "554", 0, LIMITS);
        board.record_refusal("v", "b.test", "554", 1, LIMITS);
        board.record_refusal("w", "a.test", "554", 1, LIMITS);
        board.record_success("v");
        assert_eq!(board.refusing_hops("v"), 0);
        assert_eq!(board.refusing_hops("w"), 1, "only the VMTA that delivered");
        assert!(
            board
                .record_refusal("v", "c.test", "554", 2, LIMITS)
                .is_none()
        );
    }

    #[test]
    fn a_core_tells_the_board_of_deliveries_only_when_it_can_matter() {
        let board = VmtaBoard::default();
        let view = VmtaView::default();
        view.got_through(&board, "v", 10);
        assert!(
            view.reported_success.borrow().is_empty(),
            "no refusals anywhere: one atomic load, nothing to tell"
        );
        board.record_refusal("w", "a.test", "554", 10, LIMITS);
        view.got_through(&board, "v", 10);
        let told = view.reported_success.borrow().get("v").copied();
        assert_eq!(told, Some((10, 1)));
        view.got_through(&board, "v", 10);
        assert_eq!(
            view.reported_success.borrow().get("v").copied(),
            told,
            "same second, no refusal since: not told again"
        );
        board.record_refusal("v", "a.test", "554", 10, LIMITS);
        view.got_through(&board, "v", 10);
        assert_eq!(
            board.refusing_hops("v"),
            0,
            "a refusal came since: told again within the second"
        );
        assert_eq!(board.refusing_hops("w"), 1, "only the VMTA that delivered");
        view.got_through(&board, "v", 11);
        assert_eq!(
            view.reported_success.borrow().get("v").copied(),
            Some((11, 2))
        );
    }

    #[test]
    fn zero_domains_turns_it_off() {
        let board = VmtaBoard::default();
        let off = RefusalLimits {
            domains: 0,
            ..LIMITS
        };
        for d in ["a", "b", "c", "d"] {
            assert!(board.record_refusal("v", d, "554", 0, off).is_none());
        }
        assert!(board.list(0).is_empty());
    }
}
