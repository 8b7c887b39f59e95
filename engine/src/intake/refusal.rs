//! Why intake did not take a message, and how each way in says so: an SMTP reply with its enhanced
//! status code, or an HTTP status for the API.

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
    #[error("not spooled: {0}")]
    Spool(SpoolError),
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
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::Limit(limits::Refusal::Unavailable { .. }) => 503,
            Refusal::Limit(_) => 429,
            Refusal::SpoolFull | Refusal::Spool(_) => 503,
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
    }
}
