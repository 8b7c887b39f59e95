//! The sink's fault modes: receivers that misbehave the way real ones do (a tarpit, a stalled TLS
//! handshake, a peer that stops reading, resets, 421 at the greeting, random 4xx/5xx, slow
//! replies), so that the engine's deadlines and retry logic meet them in tests and in the soak.
//!
//! Everything here is a pure decision from a roll in `[0, 100)`; the driver draws the rolls.

use std::time::Duration;

use super::session::Verdict;

/// What a whole connection does, drawn once when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionFault {
    /// A normal session (transaction faults may still apply).
    None,
    /// Accept and never send a byte (not even the greeting).
    Tarpit,
    /// Greet with 421 and close, in one of two forms (see [`greeting_421`]).
    Greeting421,
    /// Advertise STARTTLS, answer it with 220, then never answer the TLS handshake.
    StallTls,
    /// Stop reading the socket once the body of the first message starts.
    StopReadingInData,
}

/// A reply stage at which `--tempfail-percent` / `--permfail-percent` apply (`--fail-at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The reply to MAIL FROM.
    Mail,
    /// The reply to each RCPT TO.
    Rcpt,
    /// The reply to DATA (before 354) or to each BDAT chunk.
    Data,
    /// The final reply after the body (the default).
    EndOfData,
}

/// The fault settings of one sink; every percentage is in `0..=100`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Share of connections that are tarpitted.
    pub tarpit_percent: f64,
    /// Share of connections greeted with 421.
    pub greeting_421_percent: f64,
    /// Share of connections whose STARTTLS handshake stalls.
    pub stall_tls_percent: f64,
    /// Share of connections that stop reading during DATA.
    pub stop_reading_in_data_percent: f64,
    /// Share of transactions reset (TCP RST) once their body starts.
    pub reset_percent: f64,
    /// Share of replies at each stage of `fail_at` that are a 4xx.
    pub tempfail_percent: f64,
    /// Share of replies at each stage of `fail_at` that are a 5xx.
    pub permfail_percent: f64,
    /// The stages whose replies may fail; empty means end of data only.
    pub fail_at: Vec<Stage>,
    /// Delay before each write of replies (a pipelined batch is one write).
    pub slow_reply: Duration,
}

impl Faults {
    /// Why these settings cannot work together, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let connection = self.tarpit_percent
            + self.greeting_421_percent
            + self.stall_tls_percent
            + self.stop_reading_in_data_percent;
        if connection > 100.0 {
            return Err(
                "--tarpit + --greeting-421-percent + --stall-tls + --stop-reading-in-data exceed 100"
                    .into(),
            );
        }
        if self.tempfail_percent + self.permfail_percent > 100.0 {
            return Err("--tempfail-percent + --permfail-percent exceed 100".into());
        }
        Ok(())
    }

    /// The connection's fate for a roll in `[0, 100)`: the connection modes share the range, so
    /// each percentage is a share of all connections.
    pub fn connection_fault(&self, roll: f64) -> ConnectionFault {
        let mut bound = 0.0;
        for (percent, fault) in [
            (self.tarpit_percent, ConnectionFault::Tarpit),
            (self.greeting_421_percent, ConnectionFault::Greeting421),
            (self.stall_tls_percent, ConnectionFault::StallTls),
            (
                self.stop_reading_in_data_percent,
                ConnectionFault::StopReadingInData,
            ),
        ] {
            bound += percent;
            if roll < bound {
                return fault;
            }
        }
        ConnectionFault::None
    }

    /// Whether `stage` is one whose replies may fail.
    pub fn fails_at(&self, stage: Stage) -> bool {
        if self.fail_at.is_empty() {
            stage == Stage::EndOfData
        } else {
            self.fail_at.contains(&stage)
        }
    }

    /// The verdict of one reply at `stage` for a roll in `[0, 100)`.
    pub fn verdict(&self, stage: Stage, roll: f64) -> Verdict {
        if !self.fails_at(stage) {
            Verdict::Accept
        } else if roll < self.tempfail_percent {
            Verdict::TempFail
        } else if roll < self.tempfail_percent + self.permfail_percent {
            Verdict::PermFail
        } else {
            Verdict::Accept
        }
    }

    /// Whether a transaction is reset, for a roll in `[0, 100)`.
    pub fn resets(&self, roll: f64) -> bool {
        roll < self.reset_percent
    }

    /// Whether any stage before the end of data may fail (the session must roll for it).
    pub fn fails_before_end_of_data(&self) -> bool {
        (self.tempfail_percent > 0.0 || self.permfail_percent > 0.0)
            && [Stage::Mail, Stage::Rcpt, Stage::Data]
                .iter()
                .any(|&s| self.fails_at(s))
    }
}

/// The two forms of a 421 greeting: a server going down, and a receiver's own connection cap
/// (Postfix's `smtpd_client_connection_count_limit` wording), which the engine must take as a
/// signal to open fewer connections.
pub fn greeting_421(too_many_connections: bool) -> &'static [u8] {
    if too_many_connections {
        b"421 4.7.0 volley-bench sink Error: too many connections from your IP\r\n"
    } else {
        b"421 4.3.2 volley-bench sink Service not available, closing transmission channel\r\n"
    }
}

/// The reply for a failed verdict at a stage before the end of data (`None` when accepted).
pub fn stage_refusal(stage: Stage, verdict: Verdict) -> Option<&'static [u8]> {
    let reply: &'static [u8] = match (stage, verdict) {
        (_, Verdict::Accept) | (Stage::EndOfData, _) => return None,
        (Stage::Mail, Verdict::TempFail) => b"451 4.3.0 Temporary failure injected at MAIL\r\n",
        (Stage::Mail, Verdict::PermFail) => b"550 5.7.1 Permanent failure injected at MAIL\r\n",
        (Stage::Rcpt, Verdict::TempFail) => b"450 4.2.1 Temporary failure injected at RCPT\r\n",
        (Stage::Rcpt, Verdict::PermFail) => b"550 5.1.1 Permanent failure injected at RCPT\r\n",
        (Stage::Data, Verdict::TempFail) => b"451 4.3.0 Temporary failure injected at DATA\r\n",
        (Stage::Data, Verdict::PermFail) => b"554 5.3.0 Permanent failure injected at DATA\r\n",
    };
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_modes_share_the_range() {
        let faults = Faults {
            tarpit_percent: 10.0,
            greeting_421_percent: 20.0,
            stall_tls_percent: 30.0,
            stop_reading_in_data_percent: 40.0,
            ..Faults::default()
        };
        assert_eq!(faults.connection_fault(0.0), ConnectionFault::Tarpit);
        assert_eq!(faults.connection_fault(9.99), ConnectionFault::Tarpit);
        assert_eq!(faults.connection_fault(10.0), ConnectionFault::Greeting421);
        assert_eq!(faults.connection_fault(35.0), ConnectionFault::StallTls);
        assert_eq!(
            faults.connection_fault(99.9),
            ConnectionFault::StopReadingInData
        );
        assert_eq!(
            Faults::default().connection_fault(0.0),
            ConnectionFault::None
        );
        assert!(faults.check().is_ok());
        let too_much = Faults {
            tarpit_percent: 60.0,
            stall_tls_percent: 41.0,
            ..Faults::default()
        };
        assert!(too_much.check().is_err());
    }

    #[test]
    fn failures_apply_only_at_the_chosen_stages() {
        let faults = Faults {
            tempfail_percent: 30.0,
            permfail_percent: 20.0,
            ..Faults::default()
        };
        // Default: end of data only.
        assert_eq!(faults.verdict(Stage::Mail, 0.0), Verdict::Accept);
        assert_eq!(faults.verdict(Stage::EndOfData, 0.0), Verdict::TempFail);
        assert_eq!(faults.verdict(Stage::EndOfData, 40.0), Verdict::PermFail);
        assert_eq!(faults.verdict(Stage::EndOfData, 50.0), Verdict::Accept);
        assert!(!faults.fails_before_end_of_data());
        let at_rcpt = Faults {
            fail_at: vec![Stage::Rcpt],
            ..faults
        };
        assert_eq!(at_rcpt.verdict(Stage::Rcpt, 10.0), Verdict::TempFail);
        assert_eq!(at_rcpt.verdict(Stage::EndOfData, 10.0), Verdict::Accept);
        assert!(at_rcpt.fails_before_end_of_data());
        assert_eq!(
            stage_refusal(Stage::Rcpt, Verdict::PermFail),
            Some(b"550 5.1.1 Permanent failure injected at RCPT\r\n".as_slice())
        );
        assert_eq!(stage_refusal(Stage::Mail, Verdict::Accept), None);
    }

    #[test]
    fn resets_follow_their_percentage() {
        let faults = Faults {
            reset_percent: 25.0,
            ..Faults::default()
        };
        assert!(faults.resets(24.9));
        assert!(!faults.resets(25.0));
        assert!(!Faults::default().resets(0.0));
    }
}
