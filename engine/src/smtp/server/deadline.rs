//! Deadlines for whole stages (see the module documentation of `smtp::server`): when the
//! current command or body must be complete, and what happens when it is not.

use std::time::Instant;

use super::{InputPhase, Session};
use crate::smtp::reply::Reply;

/// The stage whose deadline passed, as named in the 421 reply and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutStage {
    Command,
    Data,
}

impl TimeoutStage {
    pub fn name(self) -> &'static str {
        match self {
            TimeoutStage::Command => "command",
            TimeoutStage::Data => "data",
        }
    }
}

impl Session {
    /// When the current stage must be over (see the module documentation), or `None` while the
    /// session waits for the driver's answer or is closed. The driver calls `handle_timeout` once
    /// it has passed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline().map(|(at, _)| at)
    }

    /// Checks the deadline at `now`: once passed, `421 4.4.2 <hostname> <stage> timeout` goes out,
    /// the session closes, and the stage is returned for the driver's log line.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TimeoutStage> {
        let (at, stage) = self.deadline()?;
        if now < at {
            return None;
        }
        self.now = now;
        let text = format!("{} {} timeout", self.config.hostname, stage.name());
        self.reply(Reply::TIMEOUT.with_text(text));
        self.close();
        Some(stage)
    }

    pub(super) fn deadline(&self) -> Option<(Instant, TimeoutStage)> {
        if self.closed || self.waiting.is_some() {
            return None;
        }
        let command = (
            self.command_started + self.config.command_timeout,
            TimeoutStage::Command,
        );
        let body = self
            .transaction
            .as_ref()
            .and_then(|tx| tx.body_deadline)
            .map(|at| (at, TimeoutStage::Data));
        Some(match (&self.phase, body) {
            (InputPhase::Data(_) | InputPhase::Bdat(_), Some(body)) => body,
            // A refused BDAT chunk is still read: the command that announced it bounds it.
            (InputPhase::Data(_) | InputPhase::Bdat(_), None) => command,
            // Between BDAT chunks: the next command, and the body as a whole.
            (_, Some(body)) if body.0 < command.0 => body,
            (_, _) => command,
        })
    }

    /// A command, a body or a driver's answer is complete: the next command's time starts now.
    pub(super) fn restart_command_stage(&mut self, now: Instant) {
        self.now = now;
        self.command_started = now;
    }
}
