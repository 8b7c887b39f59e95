//! The connections a queue's receiver has shown it takes, learned without an operator rule (as
//! PowerMTA and KumoMTA do): a connection refused with 421 at the greeting or "too many
//! connections", or one that reached no host while others of the queue were open, caps the queue
//! at the connections still open (at least 1). Every `CAP_RAISE_AFTER_DELIVERIES` recipients
//! delivered raise the cap by one, until it reaches the policy's `max_connections` and is lifted.

/// Recipients delivered under a learned cap that raise it by one connection: against a receiver
/// that really takes no more, one probing connection is refused per this many deliveries.
pub const CAP_RAISE_AFTER_DELIVERIES: u32 = 50;

/// A learned cap (none at first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCap {
    cap: Option<u32>,
    /// Deliveries since the cap last changed.
    delivered: u32,
}

/// A change worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapChange {
    Lowered(u32),
    Raised(u32),
    /// Back at the policy's limit: no learned cap any more.
    Lifted,
}

impl ConnectionCap {
    /// Connections allowed under `normal` (the policy's or the backoff limit).
    pub fn limit(&self, normal: u32) -> u32 {
        self.cap.map_or(normal, |c| c.min(normal))
    }

    /// The learned cap, if any.
    #[cfg(test)]
    fn get(&self) -> Option<u32> {
        self.cap
    }

    /// The receiver refused a connection while `others_open` other connections of the queue were
    /// open: the cap becomes that many (at least 1) unless it is already as low.
    pub fn refused(&mut self, others_open: u32) -> Option<CapChange> {
        let cap = others_open.max(1);
        self.delivered = 0;
        if self.cap.is_some_and(|c| c <= cap) {
            return None;
        }
        self.cap = Some(cap);
        Some(CapChange::Lowered(cap))
    }

    /// `count` recipients were delivered; `normal` is the limit without a learned cap.
    pub fn delivered(&mut self, count: u32, normal: u32) -> Option<CapChange> {
        let cap = self.cap?;
        self.delivered = self.delivered.saturating_add(count);
        if self.delivered < CAP_RAISE_AFTER_DELIVERIES {
            return None;
        }
        self.delivered = 0;
        if cap.saturating_add(1) >= normal {
            self.cap = None;
            return Some(CapChange::Lifted);
        }
        self.cap = Some(cap + 1);
        Some(CapChange::Raised(cap + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_refusals_settles_on_what_the_receiver_takes() {
        // 20 connections, the receiver admits 3: the 17 refused close one after the other.
        let mut cap = ConnectionCap::default();
        assert_eq!(cap.limit(20), 20);
        let mut open = 20;
        for _ in 0..17 {
            cap.refused(open - 1);
            open -= 1;
        }
        assert_eq!(cap.get(), Some(3));
        assert_eq!(cap.limit(20), 3);
        assert_eq!(cap.limit(2), 2, "never above the policy or backoff limit");
        assert_eq!(cap.refused(5), None, "a higher count does not raise it");
        assert_eq!(cap.refused(0), Some(CapChange::Lowered(1)), "at least 1");
    }

    #[test]
    fn deliveries_raise_it_back_to_the_policy() {
        let mut cap = ConnectionCap::default();
        assert_eq!(
            cap.delivered(1000, 4),
            None,
            "nothing learned, nothing to raise"
        );
        cap.refused(2);
        assert_eq!(cap.delivered(CAP_RAISE_AFTER_DELIVERIES - 1, 4), None);
        assert_eq!(cap.delivered(1, 4), Some(CapChange::Raised(3)));
        assert_eq!(cap.limit(4), 3);
        assert_eq!(
            cap.delivered(CAP_RAISE_AFTER_DELIVERIES, 4),
            Some(CapChange::Lifted)
        );
        assert_eq!(cap.get(), None);
        assert_eq!(cap.limit(4), 4);
    }

    #[test]
    fn a_refusal_restarts_the_count() {
        let mut cap = ConnectionCap::default();
        cap.refused(3);
        cap.delivered(CAP_RAISE_AFTER_DELIVERIES - 1, 20);
        cap.refused(3);
        assert_eq!(cap.delivered(1, 20), None);
    }
}
