//! The driver's side of `[server] max_message_bytes_in_flight`: one session's share of the message
//! bodies all inbound sessions of all cores hold in memory (an atomic in `shard::Control`).
//!
//! Charged as a body grows, in memory actually taken (the buffer's allocation), after every read;
//! a SIZE= at MAIL is only checked against what is free (reserving it would let a client that
//! declares 50 MiB and sends nothing hold the budget). So a client that lies about SIZE is held
//! to the budget by its octets. A body that finds no room is discarded by the session, which
//! answers 452 4.3.1 at its end; a complete body is held until it is spooled or refused. The share
//! is given back when the session ends, whatever ends it (`MessageBytesHeld` is released on drop).

use std::net::IpAddr;
use std::sync::Arc;

use crate::shard::{Control, MessageBytesHeld};
use crate::smtp::server::Session;

pub(super) struct BodyBudget {
    held: MessageBytesHeld,
    control: Arc<Control>,
    peer: IpAddr,
}

impl BodyBudget {
    pub(super) fn new(control: &Arc<Control>, peer: IpAddr) -> BodyBudget {
        BodyBudget {
            held: control.hold_message_bytes(),
            control: control.clone(),
            peer,
        }
    }

    /// After the session took input or an answer: holds what its bodies take now; when that does
    /// not fit in `limit`, the session discards its body (452 4.3.1 at its end) and holds what
    /// is left.
    pub(super) fn settle(&mut self, session: &mut Session, limit: u64) {
        let wanted = session.body_bytes_held() as u64;
        if self.held.hold(wanted, limit) {
            return;
        }
        if session.body_budget_exhausted() {
            log::info!(
                "session {}: message bytes in flight at the limit ({} held of {limit}, {wanted} \
                 wanted by this session): body discarded, 452 4.3.1 at its end",
                self.peer,
                self.control.message_bytes_in_flight(),
            );
        }
        // Shrinking always succeeds. A complete body still waiting in an event is not discarded
        // here; `hold_handed_over` refuses it when the driver takes it.
        let _ = self.held.hold(session.body_bytes_held() as u64, limit);
    }

    /// A complete body handed over by the session (`Event::Message`), with `session_bytes` still
    /// held by the session itself: holds it until `settle` after the answer. False when it does
    /// not fit: the driver refuses the message with 452 4.3.1.
    pub(super) fn hold_handed_over(
        &mut self,
        body_bytes: usize,
        session_bytes: usize,
        limit: u64,
    ) -> bool {
        let wanted = (body_bytes + session_bytes) as u64;
        if self.held.hold(wanted, limit) {
            return true;
        }
        log::info!(
            "session {}: message bytes in flight at the limit ({} held of {limit}): a complete \
             {body_bytes}-octet body refused with 452 4.3.1",
            self.peer,
            self.control.message_bytes_in_flight(),
        );
        false
    }

    /// At MAIL: whether a declared SIZE fits in what is free now (checked, not reserved).
    pub(super) fn size_fits(&self, size: u64, limit: u64) -> bool {
        let others = self
            .control
            .message_bytes_in_flight()
            .saturating_sub(self.held.bytes());
        others.saturating_add(size) <= limit
    }
}
