//! An operator's queue commands (suspend, resume, bounce), applied by each core to the queues it
//! owns, and to the queues it would own for a domain whose mail has not arrived yet.

use std::rc::Rc;

use super::{CoreDelivery, DeliveryCore, outcome};
use crate::queue::QueueKey;
use crate::router::AdminCommand;

impl CoreDelivery {
    fn matching_keys(&self, domain: &str, vmta: Option<&str>) -> Vec<QueueKey> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.queues
            .borrow()
            .snapshot()
            .into_iter()
            .filter(|s| s.domain == domain && vmta.is_none_or(|v| v == s.vmta))
            .map(|s| QueueKey::new(&s.vmta, &s.domain))
            .collect()
    }

    /// The queues this core would own for `domain` (one per configured VMTA, or just `vmta`), so
    /// that suspending a domain before its mail arrives holds that mail too.
    fn owned_future_keys(
        &self,
        core: &DeliveryCore,
        domain: &str,
        vmta: Option<&str>,
    ) -> Vec<QueueKey> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let config = core.config();
        let names: Vec<&str> = match vmta {
            Some(v) => vec![v],
            None if config.vmtas.is_empty() => vec![crate::placement::IMPLICIT_VMTA],
            None => config.vmtas.iter().map(|v| v.name.as_str()).collect(),
        };
        let cores = core.router().cores;
        names
            .into_iter()
            .filter(|v| crate::router::owner_core(v, &domain, cores) == self.core)
            .map(|v| QueueKey::new(v, &domain))
            .collect()
    }

    pub(super) fn admin(&self, core: &Rc<DeliveryCore>, command: AdminCommand) {
        match command {
            AdminCommand::Suspend {
                domain,
                vmta,
                reason,
            } => {
                let mut keys = self.matching_keys(&domain, vmta.as_deref());
                for key in self.owned_future_keys(core, &domain, vmta.as_deref()) {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                for key in keys {
                    self.give_policy(core, &key);
                    self.queues.borrow_mut().suspend(&key, None, &reason);
                    log::info!("queue {key} suspended: {reason}");
                }
            }
            AdminCommand::Resume { domain, vmta } => {
                for key in self.matching_keys(&domain, vmta.as_deref()) {
                    self.queues.borrow_mut().resume(&key);
                    log::info!("queue {key} resumed");
                }
                self.wake();
            }
            AdminCommand::Retry { domain, vmta } => {
                for key in self.matching_keys(&domain, vmta.as_deref()) {
                    let moved = self.queues.borrow_mut().retry_now(&key);
                    log::info!("queue {key}: {moved} deferred recipients retried now");
                }
                self.wake();
            }
            AdminCommand::Bounce {
                domain,
                vmta,
                reason,
            } => {
                for key in self.matching_keys(&domain, vmta.as_deref()) {
                    let items = self.queues.borrow_mut().bounce_all(&key);
                    log::info!("queue {key}: bouncing {} recipients: {reason}", items.len());
                    let reply = crate::smtp::client::Reply::local(
                        554,
                        (5, 0, 0),
                        format!("Bounced by the operator: {reason}"),
                    );
                    let core = core.clone();
                    glommio::spawn_local(async move {
                        outcome::bounce_items(&core, &key, items, &reply, None).await;
                    })
                    .detach();
                }
            }
        }
    }
}
