//! The envelope of a message as received: what the SMTP session hands to the spool, and what the spool
//! gives back when delivery reads a message's record. Bodies travel separately (`&[u8]`), and the
//! queues hold neither: only where the message's record lies.

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

/// The domain of `local@domain` (the part after the last `@`) in its one queue form: see
/// `normalize_domain`.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| normalize_domain(d))
        .unwrap_or_default()
}

/// A domain as queues, routes and policies know it: lower case, no trailing dot, and IDNs as
/// A-labels (`bücher.example` and `xn--bcher-kva.example` are one destination). A name IDNA
/// refuses is only lower-cased: DNS will answer for it what it answers.
pub fn normalize_domain(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    if domain.is_ascii() {
        return domain.to_ascii_lowercase();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
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
    /// RFC 8689 REQUIRETLS was requested on MAIL FROM: only over verified TLS, onward too.
    pub requiretls: bool,
    /// RFC 8689 5: the message says `TLS-Required: No` (and has no REQUIRETLS): DANE and
    /// MTA-STS are not applied to it.
    pub tls_optional: bool,
    /// The customer the message is accounted to; empty when none.
    pub customer: String,
    /// Seconds since the Unix epoch at which the message was accepted.
    pub received_at_s: u64,
    /// What the message said about itself besides the envelope: its Message-ID, campaign and
    /// routing choice (spooled with the envelope).
    pub tags: MessageTags,
}

/// A message's Message-ID, campaign and per-message VMTA or pool: kept in the spool record with
/// the envelope, so events written at delivery (also after a restart) carry them, and placement
/// after a restart routes as at reception. Strings are sanitized at intake (`intake::tags`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageTags {
    /// The RFC 5322 Message-ID without its angle brackets; empty when the message has none.
    pub message_id: String,
    /// The campaign named by `X-Volley-Campaign:` or the inject field `campaign`; empty when none.
    pub campaign: String,
    /// The pool or VMTA the message asked for (`X-Volley-Pool`, `X-Volley-VMTA`, or the inject
    /// fields); `None`: the customer's pool.
    pub route: Option<RouteChoice>,
}

impl MessageTags {
    /// No tag at all (the spool then writes the record as before they existed).
    pub fn is_empty(&self) -> bool {
        self.message_id.is_empty() && self.campaign.is_empty() && self.route.is_none()
    }
}

/// Where a message asked to be sent from, instead of its customer's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChoice {
    /// Weighted round robin over this pool's VMTAs.
    Pool(String),
    /// Always this VMTA.
    Vmta(String),
}

/// The tags of a packed envelope that has none.
static NO_TAGS: MessageTags = MessageTags {
    message_id: String::new(),
    campaign: String::new(),
    route: None,
};

/// An `Envelope` packed for delivery, which reads one back from the spool per message in transaction
/// (and keeps a few cached): every string in one allocation, NOTIFY as its spool bits, and the
/// rarely given ENVID and ORCPTs, and the tags, behind one pointer. About 3 allocations and 64 bytes plus the text, where an `Envelope` of two recipients
/// takes 7 allocations and about 400 bytes. `Envelope` stays the type at the edges (SMTP session,
/// spool codec, DSN); `to_envelope` and `recipient` convert back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedEnvelope {
    /// The sender, the customer, then every recipient address, back to back.
    text: Box<str>,
    /// Per recipient, in envelope order: where its address ends in `text`, and its NOTIFY bits.
    recipients: Box<[PackedRecipient]>,
    sender_end: u32,
    customer_end: u32,
    received_at_s: u64,
    /// `None` when the message has no ENVID, no recipient has an ORCPT and it has no tags.
    rare: Option<Box<RareParameters>>,
    ret: DsnRet,
    body_type: BodyType,
    smtputf8: bool,
    requiretls: bool,
    tls_optional: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedRecipient {
    end: u32,
    notify: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RareParameters {
    envid: Option<Box<str>>,
    /// One per recipient, in envelope order; empty when no recipient has one.
    orcpts: Box<[Option<Box<str>>]>,
    tags: MessageTags,
}

/// An offset into a packed envelope's text. Every envelope delivered was spooled first, and a spool
/// record is smaller than 4 GiB (`segment_bytes` is at most `u32::MAX`), so this never saturates;
/// if it did, the slice lookups below would answer "" rather than panic.
fn text_offset(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl PackedEnvelope {
    /// Packs `envelope`.
    pub fn new(envelope: &Envelope) -> PackedEnvelope {
        let text_len = envelope.sender.len()
            + envelope.customer.len()
            + envelope
                .recipients
                .iter()
                .map(|r| r.address.len())
                .sum::<usize>();
        let mut text = String::with_capacity(text_len);
        text.push_str(&envelope.sender);
        let sender_end = text_offset(text.len());
        text.push_str(&envelope.customer);
        let customer_end = text_offset(text.len());
        let recipients = envelope
            .recipients
            .iter()
            .map(|r| {
                text.push_str(&r.address);
                PackedRecipient {
                    end: text_offset(text.len()),
                    notify: r.notify.to_bits(),
                }
            })
            .collect();
        let has_orcpt = envelope.recipients.iter().any(|r| r.orcpt.is_some());
        let has_tags = !envelope.tags.is_empty();
        let rare = (envelope.envid.is_some() || has_orcpt || has_tags).then(|| {
            Box::new(RareParameters {
                envid: envelope.envid.as_deref().map(Box::from),
                orcpts: if has_orcpt {
                    envelope
                        .recipients
                        .iter()
                        .map(|r| r.orcpt.as_deref().map(Box::from))
                        .collect()
                } else {
                    Box::new([])
                },
                tags: envelope.tags.clone(),
            })
        });
        PackedEnvelope {
            text: text.into_boxed_str(),
            recipients,
            sender_end,
            customer_end,
            received_at_s: envelope.received_at_s,
            rare,
            ret: envelope.ret,
            body_type: envelope.body_type,
            smtputf8: envelope.smtputf8,
            requiretls: envelope.requiretls,
            tls_optional: envelope.tls_optional,
        }
    }

    fn text_range(&self, start: u32, end: u32) -> &str {
        self.text.get(start as usize..end as usize).unwrap_or("")
    }

    /// The reverse path; empty for the null sender.
    pub fn sender(&self) -> &str {
        self.text_range(0, self.sender_end)
    }

    /// The customer the message is accounted to; empty when none.
    pub fn customer(&self) -> &str {
        self.text_range(self.sender_end, self.customer_end)
    }

    /// Seconds since the Unix epoch at which the message was accepted.
    pub fn received_at_s(&self) -> u64 {
        self.received_at_s
    }

    pub fn ret(&self) -> DsnRet {
        self.ret
    }

    pub fn body_type(&self) -> BodyType {
        self.body_type
    }

    pub fn smtputf8(&self) -> bool {
        self.smtputf8
    }

    /// RFC 8689 REQUIRETLS was requested.
    pub fn requiretls(&self) -> bool {
        self.requiretls
    }

    /// RFC 8689 `TLS-Required: No`: DANE and MTA-STS are not applied.
    pub fn tls_optional(&self) -> bool {
        self.tls_optional
    }

    /// DSN `ENVID`, if given.
    pub fn envid(&self) -> Option<&str> {
        self.rare.as_ref().and_then(|r| r.envid.as_deref())
    }

    /// The message's Message-ID, campaign and routing choice.
    pub fn tags(&self) -> &MessageTags {
        self.rare.as_ref().map_or(&NO_TAGS, |r| &r.tags)
    }

    /// How many recipients the envelope has (indexes run from 0).
    pub fn recipient_count(&self) -> usize {
        self.recipients.len()
    }

    /// The address of recipient `index`, without building a `Recipient`.
    pub fn address(&self, index: usize) -> Option<&str> {
        let end = self.recipients.get(index)?.end;
        let start = match index.checked_sub(1) {
            Some(previous) => self.recipients.get(previous)?.end,
            None => self.customer_end,
        };
        Some(self.text_range(start, end))
    }

    /// Recipient `index` with its DSN parameters.
    pub fn recipient(&self, index: usize) -> Option<Recipient> {
        let address = self.address(index)?;
        let notify = self.recipients.get(index)?.notify;
        Some(Recipient {
            address: address.to_string(),
            notify: DsnNotify::from_bits(notify),
            orcpt: self
                .rare
                .as_ref()
                .and_then(|r| r.orcpts.get(index))
                .and_then(|o| o.as_deref())
                .map(str::to_string),
        })
    }

    /// The envelope without its recipients: what a transaction to some of them needs besides them.
    pub fn without_recipients(&self) -> Envelope {
        Envelope {
            sender: self.sender().to_string(),
            recipients: Vec::new(),
            ret: self.ret,
            envid: self.envid().map(str::to_string),
            body_type: self.body_type,
            smtputf8: self.smtputf8,
            requiretls: self.requiretls,
            tls_optional: self.tls_optional,
            customer: self.customer().to_string(),
            received_at_s: self.received_at_s,
            tags: self.tags().clone(),
        }
    }

    /// The whole envelope, unpacked.
    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            recipients: (0..self.recipient_count())
                .filter_map(|i| self.recipient(i))
                .collect(),
            ..self.without_recipients()
        }
    }
}

impl From<&Envelope> for PackedEnvelope {
    fn from(envelope: &Envelope) -> PackedEnvelope {
        PackedEnvelope::new(envelope)
    }
}

/// A message's identity: the core that spooled it and a per-core sequence number that never repeats
/// (the spool resumes it after the highest one it recovers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub core: u16,
    pub seq: u64,
}

impl MessageId {
    /// Appends the id's text, `{seq:012X}-{core:02X}`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        crate::number_text::push_hex_upper(out, self.seq, 12);
        out.push(b'-');
        crate::number_text::push_hex_upper(out, u64::from(self.core), 2);
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(24);
        self.write_to(&mut text);
        // Hex digits and a dash only.
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
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
        assert_eq!(id.to_string(), "000000ABCDEF-03");
        let wide = MessageId {
            core: 0x1ff,
            seq: u64::MAX,
        };
        assert_eq!(wide.to_string(), "FFFFFFFFFFFFFFFF-1FF");
        assert_eq!(wide.to_string().parse::<MessageId>(), Ok(wide));
    }

    #[test]
    fn packed_envelope_round_trips() {
        let mut orcpt = Recipient::new("b@b.example");
        orcpt.orcpt = Some("rfc822;B@B.example".into());
        orcpt.notify = DsnNotify::from_bits(0x0C);
        let full = Envelope {
            sender: "s@s.example".into(),
            recipients: vec![Recipient::new("a@a.example"), orcpt, Recipient::new("")],
            ret: DsnRet::Headers,
            envid: Some("ENV-1".into()),
            body_type: BodyType::EightBitMime,
            smtputf8: true,
            requiretls: true,
            tls_optional: true,
            customer: "acme".into(),
            received_at_s: 1_790_000_000,
            tags: MessageTags {
                message_id: "abc@s.example".into(),
                campaign: "spring".into(),
                route: Some(RouteChoice::Pool("p2".into())),
            },
        };
        let tagged_only = Envelope {
            recipients: vec![Recipient::new("x@y.example")],
            tags: MessageTags {
                route: Some(RouteChoice::Vmta("v2".into())),
                ..MessageTags::default()
            },
            ..Envelope::default()
        };
        let plain = Envelope {
            recipients: vec![Recipient::new("x@y.example")],
            ..Envelope::default()
        };
        for envelope in [full, tagged_only, plain, Envelope::default()] {
            let packed = PackedEnvelope::new(&envelope);
            assert_eq!(packed.to_envelope(), envelope);
            assert_eq!(packed.tags(), &envelope.tags);
            assert_eq!(packed.sender(), envelope.sender);
            assert_eq!(packed.customer(), envelope.customer);
            assert_eq!(packed.envid(), envelope.envid.as_deref());
            assert_eq!(packed.recipient_count(), envelope.recipients.len());
            for (i, r) in envelope.recipients.iter().enumerate() {
                assert_eq!(packed.address(i), Some(r.address.as_str()));
                assert_eq!(packed.recipient(i).as_ref(), Some(r));
            }
            assert_eq!(packed.address(envelope.recipients.len()), None);
            assert!(packed.without_recipients().recipients.is_empty());
        }
        assert!(size_of::<PackedEnvelope>() <= 64);
    }

    #[test]
    fn domain_is_lower_cased() {
        assert_eq!(domain_of("Joe@Example.COM."), "example.com");
        assert_eq!(domain_of("postmaster"), "");
    }

    #[test]
    fn u_label_and_a_label_are_one_domain() {
        assert_eq!(domain_of("a@Bücher.Example"), "xn--bcher-kva.example");
        assert_eq!(
            domain_of("a@XN--BCHER-KVA.example."),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize_domain("Bücher.example."), "xn--bcher-kva.example");
    }
}
