//! Outbound spam filtering with rspamd (`[spam_filter]`, docs/spam-filter.md): at the end of data,
//! before the 250, the message goes to rspamd's `/checkv2` HTTP API and its action decides: refuse
//! (550 5.7.1), refuse for now (451 4.7.1), add the X-Spam headers, or nothing. The request is a
//! blocking HTTP call on the core's blocking pool, never on its reactor: other sessions go on while
//! rspamd thinks.

mod rspamd;

pub use rspamd::{Action, Envelope, Verdict, check, parse_reply};

use crate::config::{SpamFilterOnError, SpamFilterSection};

/// Why no verdict came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpamFilterError {
    #[error("rspamd: {0}")]
    Http(String),
    #[error("rspamd answered HTTP {0}")]
    Status(u16),
    #[error("rspamd's answer cannot be read: {0}")]
    Reply(String),
    #[error("the check did not run: {0}")]
    Pool(String),
}

/// What intake does with a message after the check.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Take it unchanged.
    Accept,
    /// Take it with these header lines (CRLF-ended) put in front.
    AcceptWithHeaders(String),
    /// Refuse it: 5xx (`permanent`) or 4xx, with rspamd's score and symbols for the event.
    Refuse { permanent: bool, verdict: Verdict },
    /// rspamd could not be asked and `on_error = "tempfail"`.
    TempFail(SpamFilterError),
}

/// Maps a verdict (or its failure) to what intake does.
pub fn outcome(section: &SpamFilterSection, result: Result<Verdict, SpamFilterError>) -> Outcome {
    match result {
        Ok(v) => match v.action {
            Action::Reject => Outcome::Refuse {
                permanent: true,
                verdict: v,
            },
            Action::SoftReject => Outcome::Refuse {
                permanent: false,
                verdict: v,
            },
            Action::AddHeader | Action::RewriteSubject => {
                Outcome::AcceptWithHeaders(v.spam_headers())
            }
            // Greylisting means nothing for mail leaving here; no action is no action.
            Action::Greylist | Action::NoAction | Action::Other => Outcome::Accept,
        },
        Err(e) => match section.on_error {
            SpamFilterOnError::Accept => Outcome::Accept,
            SpamFilterOnError::Tempfail => Outcome::TempFail(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(on_error: SpamFilterOnError) -> SpamFilterSection {
        SpamFilterSection {
            on_error,
            ..SpamFilterSection::default()
        }
    }

    #[test]
    fn actions_map_to_what_intake_does() {
        let v = |action| Verdict {
            action,
            score: 7.5,
            required_score: 15.0,
            symbols: vec!["BAYES_SPAM".into()],
            message: String::new(),
        };
        let s = section(SpamFilterOnError::Accept);
        assert!(matches!(
            outcome(&s, Ok(v(Action::Reject))),
            Outcome::Refuse {
                permanent: true,
                ..
            }
        ));
        assert!(matches!(
            outcome(&s, Ok(v(Action::SoftReject))),
            Outcome::Refuse {
                permanent: false,
                ..
            }
        ));
        match outcome(&s, Ok(v(Action::AddHeader))) {
            Outcome::AcceptWithHeaders(h) => {
                assert!(h.starts_with("X-Spam: Yes\r\n"), "{h}");
                assert!(h.contains("X-Spam-Score: 7.50 / 15.00\r\n"), "{h}");
                assert!(h.contains("BAYES_SPAM"), "{h}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(outcome(&s, Ok(v(Action::NoAction))), Outcome::Accept);
        let failed = || Err(SpamFilterError::Status(500));
        assert_eq!(outcome(&s, failed()), Outcome::Accept);
        assert!(matches!(
            outcome(&section(SpamFilterOnError::Tempfail), failed()),
            Outcome::TempFail(_)
        ));
    }
}
