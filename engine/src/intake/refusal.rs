//! Why intake did not take a message, and how each way in says so: an SMTP reply with its enhanced
//! status code, or an HTTP status for the API.

use super::tags::RouteRefusal;
use super::xfer::XferError;
use crate::limits;
use crate::smtp::reply::{EnhancedCode, Reply};
use crate::spool::SpoolError;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The customer's plan is used up and no credits are left.
    #[error("{0}")]
    Limit(limits::Refusal),
    #[error("spool full, try again later")]
    SpoolFull,
    /// Every recipient is on the customer's suppression list.
    #[error("every recipient is suppressed")]
    Suppressed,
    #[error("not spooled: {0}")]
    Spool(SpoolError),
    /// An `X-Volley-Xfer` header from a client outside `[cluster] peer_networks`, or by the API.
    #[error("X-Volley-Xfer is only taken from the cluster's peer nodes")]
    XferUntrusted,
    /// An `X-Volley-Xfer` header from a peer that cannot be read.
    #[error("{0}")]
    XferMalformed(XferError),
    /// A pool or VMTA the message may not choose, or that does not exist.
    #[error("{0}")]
    Route(RouteRefusal),
    /// rspamd's action was "reject" (`permanent`) or "soft reject".
    #[error("refused as spam ({summary})")]
    Spam {
        permanent: bool,
        summary: String,
        score: f64,
        symbols: Vec<String>,
    },
    /// rspamd could not be asked and `[spam_filter] on_error = "tempfail"`.
    #[error("content check unavailable: {0}")]
    SpamCheckUnavailable(String),
}

impl Refusal {
    pub fn smtp_reply(&self) -> Reply {
        match self {
            Refusal::Limit(limit @ limits::Refusal::Unavailable { .. }) => Reply::new(
                451,
                Some(EnhancedCode::new(4, 3, 0)),
                format!("{limit}, try again later"),
            ),
            Refusal::Limit(limit) => Reply::new(
                451,
                Some(EnhancedCode::new(4, 7, 1)),
                format!("{limit}, try again later"),
            ),
            Refusal::Suppressed => Reply::RECIPIENT_SUPPRESSED,
            Refusal::SpoolFull => Reply::new(
                452,
                Some(EnhancedCode::new(4, 3, 1)),
                "Insufficient system storage, try again later",
            ),
            Refusal::Spool(_) => Reply::new(
                451,
                Some(EnhancedCode::new(4, 3, 0)),
                "Local error in processing, try again later",
            ),
            Refusal::XferUntrusted => Reply::new(
                550,
                Some(EnhancedCode::new(5, 7, 1)),
                "X-Volley-Xfer is only taken from the cluster's peer nodes",
            ),
            Refusal::XferMalformed(e) => {
                Reply::new(550, Some(EnhancedCode::new(5, 6, 0)), e.to_string())
            }
            // Not allowed: a policy refusal. Unknown or both: what the message says is wrong.
            Refusal::Spam {
                permanent: true,
                summary,
                ..
            } => Reply::new(
                550,
                Some(EnhancedCode::new(5, 7, 1)),
                format!("Message refused as spam ({summary})"),
            ),
            Refusal::Spam { summary, .. } => Reply::new(
                451,
                Some(EnhancedCode::new(4, 7, 1)),
                format!("Message looks like spam ({summary}), try again later"),
            ),
            Refusal::SpamCheckUnavailable(_) => Reply::new(
                451,
                Some(EnhancedCode::new(4, 7, 1)),
                "Content check unavailable, try again later",
            ),
            Refusal::Route(e @ (RouteRefusal::Foreign { .. } | RouteRefusal::Untrusted { .. })) => {
                Reply::new(550, Some(EnhancedCode::new(5, 7, 1)), e.to_string())
            }
            Refusal::Route(e @ (RouteRefusal::Unknown { .. } | RouteRefusal::Both { .. })) => {
                Reply::new(550, Some(EnhancedCode::new(5, 6, 0)), e.to_string())
            }
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::Limit(limits::Refusal::Unavailable { .. }) => 503,
            Refusal::Limit(_) => 429,
            Refusal::SpoolFull | Refusal::Spool(_) => 503,
            Refusal::XferUntrusted => 403,
            Refusal::XferMalformed(_) => 400,
            Refusal::Suppressed => 422,
            Refusal::Spam {
                permanent: true, ..
            } => 422,
            Refusal::Spam { .. } | Refusal::SpamCheckUnavailable(_) => 503,
            Refusal::Route(RouteRefusal::Foreign { .. } | RouteRefusal::Untrusted { .. }) => 403,
            Refusal::Route(RouteRefusal::Unknown { .. } | RouteRefusal::Both { .. }) => 400,
        }
    }
}

impl From<SpoolError> for Refusal {
    fn from(e: SpoolError) -> Refusal {
        match e {
            SpoolError::Full => Refusal::SpoolFull,
            e => Refusal::Spool(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_a_precise_reply() {
        let hourly = Refusal::Limit(limits::Refusal::Hourly {
            limit: 10,
            customer: "acme".into(),
        });
        let r = hourly.smtp_reply().to_string();
        assert!(
            r.starts_with(
                "451 4.7.1 Hourly sending limit of 10 messages reached for customer acme"
            ),
            "{r}"
        );
        assert_eq!(hourly.http_status(), 429);
        assert!(
            Refusal::SpoolFull
                .smtp_reply()
                .to_string()
                .starts_with("452 4.3.1")
        );
        assert_eq!(Refusal::from(SpoolError::Full).http_status(), 503);
        let untrusted = Refusal::XferUntrusted.smtp_reply().to_string();
        assert!(
            untrusted.starts_with("550 5.7.1 X-Volley-Xfer"),
            "{untrusted}"
        );
        assert_eq!(Refusal::XferUntrusted.http_status(), 403);
        let bad = Refusal::XferMalformed(XferError::Missing("node"));
        assert!(bad.smtp_reply().to_string().starts_with("550 5.6.0"));
    }

    #[test]
    fn route_refusals_name_the_field_and_the_name() {
        let foreign = Refusal::Route(RouteRefusal::Foreign {
            field: "X-Volley-Pool",
            what: "pool",
            name: "p2".into(),
            customer: "acme".into(),
        });
        assert_eq!(
            foreign.smtp_reply().to_string(),
            "550 5.7.1 X-Volley-Pool: pool \"p2\" is not in the pool of customer acme"
        );
        assert_eq!(foreign.http_status(), 403);
        let unknown = Refusal::Route(RouteRefusal::Unknown {
            field: "vmta",
            what: "VMTA",
            name: "v9".into(),
        });
        assert_eq!(
            unknown.smtp_reply().to_string(),
            "550 5.6.0 vmta: no VMTA \"v9\""
        );
        assert_eq!(unknown.http_status(), 400);
        let both = Refusal::Route(RouteRefusal::Both {
            pool: "X-Volley-Pool",
            vmta: "X-Volley-VMTA",
        });
        assert!(
            both.smtp_reply()
                .to_string()
                .starts_with("550 5.6.0 X-Volley-Pool and X-Volley-VMTA both given")
        );
        let untrusted = Refusal::Route(RouteRefusal::Untrusted {
            field: "X-Volley-VMTA",
        });
        assert!(
            untrusted
                .smtp_reply()
                .to_string()
                .starts_with("550 5.7.1 X-Volley-VMTA is only taken")
        );
    }
}
