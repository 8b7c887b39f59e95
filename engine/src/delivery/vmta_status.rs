//! What delivery tells the VMTA availability board (`placement::availability`): a refusal at
//! connect or before any transaction, a block at MAIL or RCPT, or mail that got through.

use std::sync::atomic::Ordering;

use crate::delivery::DeliveryCore;
use crate::placement::RefusalLimits;
use crate::queue::QueueKey;
use crate::smtp::client::{RecipientResult, Reply, ReplySource};

/// Whether a failed connection attempt is a refusal of the VMTA (its address or its reputation)
/// rather than a problem of one destination: the TCP connect was refused or reset, or, before any
/// transaction, the server answered 421 or 5xx (greeting, EHLO) or with a 4.7.x/5.7.x code.
pub fn is_refusal_reply(reply: &Reply) -> bool {
    reply.source == ReplySource::Remote
        && (reply.code == 421
            || (500..600).contains(&reply.code)
            || reply.enhanced.is_some_and(|e| e.subject == 7))
}

/// Whether a connect error is a refusal (see `is_refusal_reply`); a timeout is not: it says more
/// about the destination than about the VMTA.
pub fn is_refusal_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
    )
}

/// A connection of `key`'s VMTA to `next_hop` ended with `reply` before any transaction. When
/// that is a refusal (`is_refusal_reply`), see `observe_refusal`; otherwise false.
pub fn observe_failed_session(
    core: &DeliveryCore,
    key: &QueueKey,
    next_hop: &str,
    reply: &Reply,
) -> bool {
    if !is_refusal_reply(reply) {
        return false;
    }
    let first_line = reply.text.lines().next().unwrap_or_default();
    observe_refusal(core, key, next_hop, &format!("{} {first_line}", reply.code))
}

/// A TCP connect of `key`'s VMTA to `next_hop` failed with `error`. When that is a refusal
/// (`is_refusal_error`), see `observe_refusal`; otherwise false.
pub fn observe_connect_error(
    core: &DeliveryCore,
    key: &QueueKey,
    next_hop: &str,
    error: &std::io::Error,
) -> bool {
    is_refusal_error(error) && observe_refusal(core, key, next_hop, &format!("connect: {error}"))
}

/// A connection attempt from `key`'s VMTA to its destination was refused (`what`: the reply or
/// error). Records it on the board, taking the VMTA out when it is refused everywhere (logged and
/// counted). Returns whether the VMTA is out of its pools now: its queued mail should then move to
/// another VMTA of its pool.
fn observe_refusal(core: &DeliveryCore, key: &QueueKey, next_hop: &str, what: &str) -> bool {
    let config = core.config();
    if config.vmta(&key.vmta).is_none() {
        return false;
    }
    let now_s = crate::clock::unix_s();
    let limits = RefusalLimits::from_config(&config.shaping);
    let board = &core.placement.board;
    if let Some(out) = board.record_refusal(&key.vmta, next_hop, what, now_s, limits) {
        log::warn!(
            "VMTA {} out of its pools for {} s: {}",
            key.vmta,
            limits.out_s,
            out.reason
        );
        core.counters()
            .vmtas_refused_out
            .fetch_add(1, Ordering::Relaxed);
    }
    core.placement.vmtas.is_disabled(board, &key.vmta, now_s)
}

/// A transaction of `key`'s VMTA ended. A recipient delivered means the VMTA is not refused
/// everywhere (reported at most once a second per VMTA and core: no lock per message). No recipient
/// delivered and every reply an x.7.x from the server (a block at MAIL or RCPT, "client host
/// blocked using ...") is a refusal, as at the greeting.
pub fn observe_transaction(
    core: &DeliveryCore,
    key: &QueueKey,
    next_hop: &str,
    results: &[RecipientResult],
) {
    if results.iter().any(|r| r.reply.is_positive()) {
        let now_s = crate::clock::unix_s();
        core.placement
            .vmtas
            .got_through(&core.placement.board, &key.vmta, now_s);
        return;
    }
    let blocked = |r: &RecipientResult| {
        r.reply.source == ReplySource::Remote && r.reply.enhanced.is_some_and(|e| e.subject == 7)
    };
    if let Some(first) = results.first()
        && results.iter().all(blocked)
    {
        let first_line = first.reply.text.lines().next().unwrap_or_default();
        observe_refusal(
            core,
            key,
            next_hop,
            &format!("{} {first_line}", first.reply.code),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_counts_as_a_refusal() {
        use crate::smtp::client::EnhancedCode;
        let remote = |code: u16, enhanced: Option<(u8, u16, u16)>| Reply {
            code,
            enhanced: enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d)),
            text: "x".into(),
            source: ReplySource::Remote,
        };
        assert!(is_refusal_reply(&remote(554, None)));
        assert!(is_refusal_reply(&remote(421, None)));
        assert!(is_refusal_reply(&remote(450, Some((4, 7, 1)))));
        assert!(!is_refusal_reply(&remote(451, Some((4, 3, 0)))));
        assert!(!is_refusal_reply(&Reply::local(554, (5, 7, 1), "local")));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(is_refusal_error(&refused));
        assert!(!is_refusal_error(&timed_out));
    }
}
