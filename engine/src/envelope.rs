//! The envelope of a message as received: what the SMTP session hands to the spool, and what the spool
//! gives back at recovery. Bodies travel separately (`&[u8]`), so the queue index never holds them.

use std::fmt;

/// DSN `RET` parameter (RFC 3461 section 4.3): how much of the message a bounce carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DsnRet {
    #[default]
    Unspecified,
    Full,
    Headers,
}

/// DSN `NOTIFY` parameter (RFC 3461 section 4.1) as a bit set; `NEVER` is the empty set with `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsnNotify {
    /// No NOTIFY given: the default behaviour (failure and delay reports) applies.
    pub unspecified: bool,
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl DsnNotify {
    pub const DEFAULT: DsnNotify = DsnNotify {
        unspecified: true,
        never: false,
        success: false,
        failure: false,
        delay: false,
    };

    /// Whether a failure report is wanted for this recipient.
    pub fn wants_failure(&self) -> bool {
        !self.never && (self.unspecified || self.failure)
    }

    /// Whether a delay report is wanted for this recipient.
    pub fn wants_delay(&self) -> bool {
        !self.never && (self.unspecified || self.delay)
    }

    /// Whether a success report is wanted for this recipient.
    pub fn wants_success(&self) -> bool {
        !self.never && self.success
    }

    /// Bits for the spool format: 0x01 unspecified, 0x02 never, 0x04 success, 0x08 failure, 0x10 delay.
    pub fn to_bits(self) -> u8 {
        (self.unspecified as u8)
            | (self.never as u8) << 1
            | (self.success as u8) << 2
            | (self.failure as u8) << 3
            | (self.delay as u8) << 4
    }

    pub fn from_bits(bits: u8) -> DsnNotify {
        DsnNotify {
            unspecified: bits & 0x01 != 0,
            never: bits & 0x02 != 0,
            success: bits & 0x04 != 0,
            failure: bits & 0x08 != 0,
            delay: bits & 0x10 != 0,
        }
    }
}

/// One envelope recipient with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward path without angle brackets: `local@domain`.
    pub address: String,
    pub notify: DsnNotify,
    /// DSN `ORCPT`, kept verbatim (`rfc822;user@example.com`), if given.
    pub orcpt: Option<String>,
}

impl Recipient {
    pub fn new(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            notify: DsnNotify::DEFAULT,
            orcpt: None,
        }
    }

    /// The domain part, lower-cased; empty when the address has none.
    pub fn domain(&self) -> String {
        domain_of(&self.address)
    }
}

/// The lower-cased domain of `local@domain` (the part after the last `@`).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// The body's declared content: RFC 6152 8BITMIME and RFC 3030 BINARYMIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// Everything known about a message apart from its body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The reverse path without angle brackets; empty for the null sender (bounces).
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub ret: DsnRet,
    /// DSN `ENVID`, kept verbatim (xtext-decoded), if given.
    pub envid: Option<String>,
    pub body_type: BodyType,
    /// RFC 6531 SMTPUTF8 was requested on MAIL FROM.
    pub smtputf8: bool,
    /// The customer the message is accounted to; empty when none.
    pub customer: String,
    /// Seconds since the Unix epoch at which the message was accepted.
    pub received_at_s: u64,
}

/// A message's identity: the core that spooled it and a per-core sequence number that never repeats
/// (the spool resumes it after the highest one it recovers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub core: u16,
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012X}-{:02X}", self.seq, self.core)
    }
}

impl std::str::FromStr for MessageId {
    type Err = ();
    fn from_str(s: &str) -> Result<MessageId, ()> {
        let (seq, core) = s.split_once('-').ok_or(())?;
        Ok(MessageId {
            seq: u64::from_str_radix(seq, 16).map_err(|_| ())?,
            core: u16::from_str_radix(core, 16).map_err(|_| ())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_bits_round_trip() {
        for bits in 0u8..32 {
            assert_eq!(DsnNotify::from_bits(bits).to_bits(), bits);
        }
    }

    #[test]
    fn message_id_round_trip() {
        let id = MessageId {
            core: 3,
            seq: 0xABCDEF,
        };
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
    }

    #[test]
    fn domain_is_lower_cased() {
        assert_eq!(domain_of("Joe@Example.COM."), "example.com");
        assert_eq!(domain_of("postmaster"), "");
    }
}
