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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::rc::Rc;
    use std::time::Instant;

    use super::*;
    use crate::config::Config;
    use crate::smtp::server::{Event, PeerInfo, ServerConfig};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A session after EHLO, MAIL, RCPT and DATA (the 354 sent).
    fn in_data() -> Session {
        let mut s = Session::new(
            Rc::new(ServerConfig::default()),
            PeerInfo {
                ip: LOCAL,
                relay_allowed: true,
            },
            false,
            Instant::now(),
        );
        s.receive(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n", Instant::now());
        while let Some(event) = s.poll_event() {
            if let Event::Mail { .. } = event {
                s.mail_result(Ok(()), Instant::now());
            }
        }
        s.receive(b"RCPT TO:<c@d.example>\r\nDATA\r\n", Instant::now());
        s.take_output(&mut Vec::new());
        s
    }

    fn control() -> Arc<Control> {
        Control::new(Arc::new(Config::embedded_default()), None)
    }

    #[test]
    fn a_body_that_does_not_fit_is_discarded_and_every_share_comes_back() {
        let control = control();
        let limit = 10_000;
        let (mut a, mut b) = (in_data(), in_data());
        let (mut budget_a, mut budget_b) = (
            BodyBudget::new(&control, LOCAL),
            BodyBudget::new(&control, LOCAL),
        );
        a.receive(&b"0123456789012345678\r\n".repeat(300), Instant::now());
        budget_a.settle(&mut a, limit);
        let held_a = a.body_bytes_held() as u64;
        assert!(held_a >= 6300);
        assert_eq!(control.message_bytes_in_flight(), held_a);
        b.receive(&b"0123456789012345678\r\n".repeat(200), Instant::now());
        budget_b.settle(&mut b, limit);
        assert_eq!(b.body_bytes_held(), 0, "b's body did not fit: freed");
        assert_eq!(control.message_bytes_in_flight(), held_a, "b holds nothing");
        b.receive(b".\r\n", Instant::now());
        let mut out = Vec::new();
        b.take_output(&mut out);
        assert!(
            out.starts_with(b"452 4.3.1 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // a is not disturbed, and its share is given back when its session ends.
        a.receive(b".\r\n", Instant::now());
        assert!(matches!(a.poll_event(), Some(Event::Message { .. })));
        drop(budget_b);
        drop(budget_a);
        assert_eq!(control.message_bytes_in_flight(), 0);
    }

    #[test]
    fn a_complete_body_without_room_is_refused_by_the_driver() {
        let control = control();
        let mut s = in_data();
        let mut budget = BodyBudget::new(&control, LOCAL);
        // The whole body and its end arrive in one read: the session has nothing left to discard.
        s.receive(
            &[&b"x".repeat(998)[..], b"\r\n.\r\n"].concat(),
            Instant::now(),
        );
        budget.settle(&mut s, 100);
        assert_eq!(control.message_bytes_in_flight(), 0);
        let Some(Event::Message { body, .. }) = s.poll_event() else {
            panic!("a complete message");
        };
        assert!(!budget.hold_handed_over(body.capacity(), s.body_bytes_held(), 100));
        assert!(budget.hold_handed_over(body.capacity(), s.body_bytes_held(), 1 << 20));
        assert_eq!(control.message_bytes_in_flight(), body.capacity() as u64);
    }

    #[test]
    fn size_is_checked_not_reserved() {
        let control = control();
        let mut holder = in_data();
        let mut held = BodyBudget::new(&control, LOCAL);
        holder.receive(&b"y".repeat(600), Instant::now());
        held.settle(&mut holder, 10_000);
        let in_flight = control.message_bytes_in_flight();
        assert!(in_flight >= 600, "the holder's body is held: {in_flight}");
        let budget = BodyBudget::new(&control, LOCAL);
        let free = 10_000 - in_flight;
        assert!(budget.size_fits(free, 10_000));
        assert!(!budget.size_fits(free + 1, 10_000));
        assert!(budget.size_fits(free, 10_000), "checking reserved nothing");
        assert_eq!(control.message_bytes_in_flight(), in_flight);
    }
}
