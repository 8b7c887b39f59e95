//! VMTAs taken out of their pools: by the API (until enabled again) or automatically when their
//! source address cannot be bound (for `BIND_FAILURE_RETRY_S`, then tried again). A pool skips a
//! disabled VMTA when it picks one for a message, unless every VMTA of the pool is disabled.
//!
//! The board is process-wide; a core reads it through its own cached copy, refreshed only when the
//! board's version changes or an automatic disable runs out, so placing a message costs one atomic
//! load, not a lock.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How long a VMTA whose source address failed to bind stays out before it is tried again.
pub const BIND_FAILURE_RETRY_S: u64 = 60;

/// Why and until when a VMTA is out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    pub reason: String,
    pub since_s: u64,
    /// `None` = until enabled by the API.
    pub until_s: Option<u64>,
}

/// Every disabled VMTA.
#[derive(Debug, Default)]
pub struct VmtaBoard {
    version: AtomicU64,
    /// Locked on a change, and by a core when the version moved: never per message.
    disabled: Mutex<HashMap<String, Disabled>>,
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
}

#[derive(Debug, Default)]
struct ViewState {
    version: Option<u64>,
    /// The earliest end of an automatic disable: the view refreshes then.
    next_expiry_s: Option<u64>,
    disabled: HashSet<String>,
}

impl VmtaView {
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
}
