//! The router: which core owns a (VMTA, destination domain) queue, and the lock-free rings between
//! cores. Every ordered pair of cores has its own single-producer single-consumer ring (glommio's
//! shared channel: a lock-free ring with eventfd wake-ups), so no two cores ever contend on one
//! queue and a busy core never blocks another except by filling their ring (backpressure).

mod question;

use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use crate::envelope::MessageId;
use crate::spool::{RecipientState, RecordLocation};

pub use question::{HeldQueue, HeldRecipient, MessageBounced, MessageHeld, Question, Rerouted};

/// Messages in flight between cores, per ring.
const RING_CAPACITY: usize = 4096;

/// Recipients of one spooled message, for one (VMTA, domain) queue on the receiving core. The
/// envelope and body stay in the spool: the receiving core reads them from `record` when a
/// transaction needs them (`SegmentReader::message`).
#[derive(Debug, Clone)]
pub struct Handoff {
    pub id: MessageId,
    /// Where the message record lies (in the spool of core `id.core`).
    pub record: RecordLocation,
    pub vmta: Arc<str>,
    pub domain: Arc<str>,
    /// The message's customer ("" for none), for the metrics by customer.
    pub customer: Arc<str>,
    /// Indexes of the envelope's recipients, with the attempts already made for each.
    pub recipients: Vec<(u32, u32)>,
    /// Not before this time (seconds since the epoch); 0 = now.
    pub not_before_s: u64,
    /// The message says `TLS-Required: No` (RFC 8689 5).
    pub tls_optional: bool,
}

/// An operator's request, applied by every core to the queues it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    Suspend {
        domain: String,
        vmta: Option<String>,
        reason: String,
    },
    Resume {
        domain: String,
        vmta: Option<String>,
    },
    /// Deferred recipients become ready now.
    Retry {
        domain: String,
        vmta: Option<String>,
    },
    Bounce {
        domain: String,
        vmta: Option<String>,
        reason: String,
    },
}

#[derive(Debug)]
pub enum CoreMessage {
    Deliver(Handoff),
    /// New states of recipients of one message (one transaction's deliveries together), for
    /// the core whose spool holds the message.
    Outcomes {
        id: MessageId,
        states: Vec<(u32, RecipientState)>,
    },
    Admin(AdminCommand),
    /// The API asks what this core holds (a message, a queue), or to act on it, and awaits the
    /// answer.
    Ask(Question),
}

/// The core that owns the queue of (`vmta`, `domain`): a stable hash, the same on every core.
pub fn owner_core(vmta: &str, domain: &str, cores: usize) -> usize {
    // FNV-1a: stable across processes and releases (std's hasher is randomly keyed).
    let mut h = Fnv(0xcbf29ce484222325);
    vmta.hash(&mut h);
    domain.hash(&mut h);
    (h.finish() % cores.max(1) as u64) as usize
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

/// One core's unconnected ends, built before the executors start.
struct CoreEnds {
    senders: Vec<Option<SharedSender<CoreMessage>>>,
    receivers: Vec<SharedReceiver<CoreMessage>>,
}

/// The rings of every pair of cores, waiting to be taken by their cores.
pub struct RouterSetup {
    cores: usize,
    ends: Mutex<Vec<Option<CoreEnds>>>,
}

impl RouterSetup {
    pub fn new(cores: usize) -> Arc<RouterSetup> {
        let mut ends: Vec<CoreEnds> = (0..cores)
            .map(|_| CoreEnds {
                senders: (0..cores).map(|_| None).collect(),
                receivers: Vec::new(),
            })
            .collect();
        for from in 0..cores {
            for to in 0..cores {
                if from != to {
                    let (tx, rx) = shared_channel::new_bounded(RING_CAPACITY);
                    ends[from].senders[to] = Some(tx);
                    ends[to].receivers.push(rx);
                }
            }
        }
        Arc::new(RouterSetup {
            cores,
            ends: Mutex::new(ends.into_iter().map(Some).collect()),
        })
    }

    /// Connects this core's ends (every core must call it, concurrently); `handle` receives every
    /// message other cores send here.
    pub async fn connect(
        &self,
        core: usize,
        handle: Rc<dyn Fn(CoreMessage)>,
    ) -> Result<Router, String> {
        let ends = self
            .ends
            .lock()
            .map_err(|_| "router setup poisoned".to_string())?
            .get_mut(core)
            .and_then(Option::take)
            .ok_or_else(|| format!("router ends of core {core} already taken"))?;
        let mut receivers = Vec::new();
        for rx in ends.receivers {
            receivers.push(glommio::spawn_local(rx.connect()).detach());
        }
        let mut senders = Vec::new();
        for tx in ends.senders {
            senders.push(tx.map(|tx| glommio::spawn_local(tx.connect()).detach()));
        }
        let mut connected_senders = Vec::with_capacity(senders.len());
        for tx in senders {
            connected_senders.push(match tx {
                Some(task) => Some(task.await.ok_or("router connect cancelled")?),
                None => None,
            });
        }
        for rx in receivers {
            let rx: ConnectedReceiver<CoreMessage> = rx.await.ok_or("router connect cancelled")?;
            let handle = handle.clone();
            glommio::spawn_local(async move {
                while let Some(message) = rx.recv().await {
                    handle(message);
                }
            })
            .detach();
        }
        Ok(Router {
            core,
            cores: self.cores,
            senders: connected_senders,
            local: handle,
        })
    }
}

/// A core's connected view of the rings.
pub struct Router {
    pub core: usize,
    pub cores: usize,
    senders: Vec<Option<ConnectedSender<CoreMessage>>>,
    local: Rc<dyn Fn(CoreMessage)>,
}

impl Router {
    /// Sends to `core`; a message for this core is handled at once. Waits while the ring is full.
    pub async fn send(&self, core: usize, message: CoreMessage) {
        match self.senders.get(core).and_then(Option::as_ref) {
            Some(tx) => {
                if tx.send(message).await.is_err() {
                    log::error!(
                        "router: core {core} is gone; message dropped (the spool keeps it)"
                    );
                }
            }
            None => (self.local)(message),
        }
    }

    /// Sends a copy to every core, this one included.
    pub async fn broadcast(&self, message: impl Fn() -> CoreMessage) {
        for core in 0..self.cores {
            self.send(core, message()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        for cores in 1..8 {
            let a = owner_core("v1", "example.com", cores);
            assert_eq!(a, owner_core("v1", "example.com", cores));
            assert!(a < cores);
        }
        // Spreads: 1000 domains over 4 cores, each core gets a fair share.
        let mut counts = [0; 4];
        for i in 0..1000 {
            counts[owner_core("v", &format!("d{i}.test"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 200), "{counts:?}");
    }
}
