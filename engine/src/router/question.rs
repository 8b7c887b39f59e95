//! Questions the API asks the cores about the mail they hold, each carrying the way back for its
//! answer (a oneshot, which wakes the asking core's task from the answering core): what a core
//! holds of one message, bounce what it holds queued of one message, move one queue to a pool.

use futures_channel::oneshot;

use crate::envelope::MessageId;
use crate::spool::RecordLocation;

#[derive(Debug)]
pub enum Question {
    /// What this core holds of message `id`: its spool's view (the message's own core) and the
    /// recipients queued here.
    Message {
        id: MessageId,
        answer: oneshot::Sender<MessageHeld>,
    },
    /// Bounce every recipient of `id` queued here now (DSN and accounting as any bounce).
    BounceMessage {
        id: MessageId,
        reason: String,
        answer: oneshot::Sender<MessageBounced>,
    },
    /// Move the queued recipients of the queue (`vmta`, `domain`), which this core owns, to
    /// VMTAs of the pool `to_pool`.
    Reroute {
        vmta: String,
        domain: String,
        to_pool: String,
        answer: oneshot::Sender<Rerouted>,
    },
}

/// What one core holds of one message. Its size follows the message's recipients held here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageHeld {
    pub core: usize,
    /// From the message's own core, while the message has unfinished recipients: for each
    /// recipient (envelope order), whether it is finished (delivered, bounced, expired).
    pub finished: Option<Vec<bool>>,
    /// Where the message record lies, when recipients of it are queued or in flight here.
    pub record: Option<RecordLocation>,
    /// Recipients of it on this core, queued or in flight.
    pub pending: u32,
    /// The queues holding the recipients in `queued`.
    pub queues: Vec<HeldQueue>,
    /// Its queued recipients found here.
    pub queued: Vec<HeldRecipient>,
}

/// A queue holding recipients of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldQueue {
    pub vmta: String,
    /// The queue's domain (the recipient's, or its `[[rollup]]` group).
    pub domain: String,
    /// Why it hands out nothing now (suspended, rate wait), if so.
    pub held: Option<String>,
}

/// One queued recipient of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldRecipient {
    /// Index in the envelope.
    pub recipient: u32,
    /// Its queue, in `MessageHeld::queues`.
    pub queue: u32,
    /// Waiting for its retry time (else ready: waiting for a connection).
    pub deferred: bool,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Seconds since the epoch: its retry time when deferred, when it became ready otherwise.
    pub next_attempt_s: u64,
}

/// What one core bounced of one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageBounced {
    /// Queued recipients taken and bounced.
    pub bounced: u32,
    /// Recipients of it on this core that were not queued: on a connection now (their attempt
    /// finishes) or between cores.
    pub in_flight: u32,
}

/// What a reroute moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rerouted {
    /// Whether the queue existed on its core.
    pub queue_found: bool,
    /// Recipients handed to a VMTA of the pool.
    pub moved: u32,
    /// Recipients left in the queue: their message record cannot be read now.
    pub left: u32,
}
