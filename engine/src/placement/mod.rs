//! Placement: where a spooled message's recipients go. The customer's pool picks a VMTA (weighted
//! round robin over those available: `availability`), recipients are grouped by queue domain (the
//! recipient's domain, or its `[[rollup]]` group, found by MX when needed: `mx_rollup`), and each
//! group is handed through the router to the core that owns its (VMTA, domain) queue (`routing`).
//! Intake places new messages, the start places what the spool recovered, delivery moves mail off
//! a VMTA that is out; placement itself knows nothing of queues or connections.

mod availability;
mod mx_rollup;
mod routing;

use std::cell::Cell;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

pub use availability::{BIND_FAILURE_RETRY_S, Disabled, RefusalLimits, VmtaBoard, VmtaView};
pub use mx_rollup::{
    CoreMxRollup, MX_ROLLUP_FAILURE_REMEMBER_S, MX_ROLLUP_LOOKUPS_MAX,
    MX_ROLLUP_MEMORY_DOMAINS_MAX, MX_ROLLUP_REMEMBER_S, MX_ROLLUP_SWEEP_EVERY_S,
    MX_ROLLUP_WAITING_PER_LOOKUP_MAX, group_of_answer, group_of_mx_hosts, mx_host_matches,
};
pub use routing::{
    IMPLICIT_VMTA, hand_off_to, pick_from_pool, pick_vmta, route_new_message, route_recovered,
};

use crate::shard::Shard;

/// One core's placement: its shard, its MX rollup memory, its view of which VMTAs are out, and its
/// turn in the pools' round robin.
pub struct Placement {
    pub shard: Rc<Shard>,
    /// Which queue each domain's MX answer put it in, and the lookups under way.
    pub mx_rollup: CoreMxRollup,
    /// The process-wide board of VMTAs out of their pools (the API and delivery change it).
    pub board: Arc<VmtaBoard>,
    /// This core's cached copy of the board.
    pub vmtas: VmtaView,
    pool_turn: Cell<u64>,
}

impl Placement {
    pub fn new(shard: Rc<Shard>, board: Arc<VmtaBoard>) -> Placement {
        Placement {
            pool_turn: Cell::new(shard.index as u64),
            shard,
            mx_rollup: CoreMxRollup::default(),
            board,
            vmtas: VmtaView::default(),
        }
    }

    /// The next turn of weighted round robin over a pool's VMTAs.
    pub fn next_pool_turn(&self) -> u64 {
        let turn = self.pool_turn.get();
        self.pool_turn.set(turn.wrapping_add(1));
        turn
    }
}

impl Deref for Placement {
    type Target = Shard;

    fn deref(&self) -> &Shard {
        &self.shard
    }
}
