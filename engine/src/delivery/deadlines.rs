//! The deadlines of an outbound connection in one place: the domain policy's `Deadlines` (from
//! `[[domain]] *_timeout_ms`) split into the reply timeouts the session arms itself
//! (`session_timeouts`) and the steps the driver bounds (`within`): the connect, the TLS
//! handshake, each write. A step that runs out becomes a 451 4.4.2 reply naming it and the server.

use std::future::Future;
use std::time::Duration;

use crate::config::Deadlines;
use crate::smtp::client::{Reply, StageTimeouts};

/// Idle between transactions before QUIT (the session's; not a receiver's deadline).
const IDLE_MS: u64 = 60_000;

/// A step the driver runs under its own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    Tls,
    Write,
}

impl Step {
    /// The start of the reply text, completed with the server ("... mx.example (192.0.2.1)").
    pub fn timeout_text(self) -> &'static str {
        match self {
            Step::Connect => "Timeout connecting to",
            Step::Tls => "Timeout in the TLS handshake with",
            Step::Write => "Timeout writing to",
        }
    }

    /// How long the step may take under `deadlines`.
    pub fn limit(self, deadlines: &Deadlines) -> Duration {
        Duration::from_millis(match self {
            Step::Connect => deadlines.connect_ms,
            Step::Tls => deadlines.tls_ms,
            Step::Write => deadlines.write_ms,
        })
    }

    /// The deferral reply when the step ran out with `peer` ("host (address)").
    pub fn timeout_reply(self, peer: &str) -> Reply {
        Reply::local(451, (4, 4, 2), format!("{} {peer}", self.timeout_text()))
    }
}

/// The reply timeouts the session arms for each stage.
pub fn session_timeouts(deadlines: &Deadlines) -> StageTimeouts {
    StageTimeouts {
        greeting_ms: deadlines.greeting_ms,
        reply_ms: deadlines.reply_ms,
        data_ms: deadlines.data_ms,
        idle_ms: IDLE_MS,
    }
}

/// Runs `step` for at most `limit`; `None` when it ran out (the future is dropped).
pub async fn within<F: Future>(limit: Duration, step: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(step.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_deadline_lands_on_its_stage() {
        let d = Deadlines {
            connect_ms: 1,
            tls_ms: 2,
            greeting_ms: 3,
            reply_ms: 4,
            data_ms: 5,
            write_ms: 6,
        };
        assert_eq!(Step::Connect.limit(&d), Duration::from_millis(1));
        assert_eq!(Step::Tls.limit(&d), Duration::from_millis(2));
        assert_eq!(Step::Write.limit(&d), Duration::from_millis(6));
        let t = session_timeouts(&d);
        assert_eq!((t.greeting_ms, t.reply_ms, t.data_ms), (3, 4, 5));
    }

    #[test]
    fn a_timeout_reply_defers_and_names_step_and_server() {
        let reply = Step::Write.timeout_reply("mx.test (192.0.2.1)");
        assert!(reply.is_transient());
        assert_eq!(
            reply.to_string(),
            "451 4.4.2 Timeout writing to mx.test (192.0.2.1)"
        );
    }

    #[test]
    fn within_gives_up_at_the_limit_and_keeps_a_result_that_came_in_time() {
        glommio::LocalExecutor::default().run(async {
            let never = futures_lite::future::pending::<()>();
            assert_eq!(within(Duration::from_millis(5), never).await, None);
            assert_eq!(within(Duration::from_secs(60), async { 7 }).await, Some(7));
        });
    }
}
