//! The hand-over header between cluster nodes (a drain): the node that hands a message over puts
//! `X-Volley-Xfer:` in front of the stored message; the receiving node takes it off and, when the
//! client is inside its `[cluster] peer_networks`, keeps the message's customer, first reception
//! time and attempt count (`intake::accept`). From anyone else a message carrying it is refused.
//! Pure: formatting and parsing only.
//!
//! `X-Volley-Xfer: node=mta1; id=00000000002A-00; customer=acme; received=1790000000; attempts=2`
//! and `; campaign=spring` when the message named one (its `X-Volley-Campaign` was taken off on
//! the first node).
//!
//! Values are percent-encoded outside `[A-Za-z0-9._@+-]`, so a customer name holding `;`, `=`,
//! spaces or non-ASCII text survives; unknown keys are ignored (a newer node may add some).

use std::fmt::Write;

/// The header's field name (matched case-insensitively, as every header field name is).
pub const XFER_HEADER: &str = "X-Volley-Xfer";

/// A header value longer than this is refused: the node name and the customer are short.
pub const XFER_HEADER_BYTES_MAX: usize = 1024;

/// What a node says about a message it hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xfer {
    /// The `[cluster] node` name of the node handing it over.
    pub node: String,
    /// The message's queue id on that node: with `node` and a recipient, it names one hand-over,
    /// so the receiver can see the same one again (a duplicate after an interrupted drain).
    pub id: String,
    /// The customer it is accounted to; empty when none.
    pub customer: String,
    /// When the message was first received (seconds since the Unix epoch): `max_queue_age` counts
    /// from here.
    pub received_s: u64,
    /// Delivery attempts already made for each recipient of this hand-over.
    pub attempts: u32,
    /// The campaign the message named on the first node; empty when none.
    pub campaign: String,
}

/// Why a header value was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XferError {
    #[error("X-Volley-Xfer is longer than {XFER_HEADER_BYTES_MAX} bytes")]
    TooLong,
    #[error("X-Volley-Xfer lacks `{0}`")]
    Missing(&'static str),
    #[error("X-Volley-Xfer has a bad `{0}`")]
    Bad(&'static str),
    #[error("X-Volley-Xfer gives `{0}` twice")]
    Repeated(&'static str),
}

impl Xfer {
    /// The whole header line, ending in CRLF, to put in front of the stored message.
    pub fn header_line(&self) -> String {
        let mut line = String::with_capacity(96 + self.customer.len());
        let _ = write!(line, "{XFER_HEADER}: node=");
        encode(&self.node, &mut line);
        line.push_str("; id=");
        encode(&self.id, &mut line);
        line.push_str("; customer=");
        encode(&self.customer, &mut line);
        let _ = write!(
            line,
            "; received={}; attempts={}",
            self.received_s, self.attempts
        );
        if !self.campaign.is_empty() {
            line.push_str("; campaign=");
            encode(&self.campaign, &mut line);
        }
        line.push_str("\r\n");
        line
    }

    /// Reads a header value (what follows `X-Volley-Xfer:`, unfolded or not).
    pub fn parse(value: &str) -> Result<Xfer, XferError> {
        if value.len() > XFER_HEADER_BYTES_MAX {
            return Err(XferError::TooLong);
        }
        let mut node = None;
        let mut id = None;
        let mut customer = None;
        let mut received_s = None;
        let mut attempts = None;
        let mut campaign = None;
        for part in value.split(';') {
            let part = part.trim_matches([' ', '\t', '\r', '\n']);
            if part.is_empty() {
                continue;
            }
            let (key, raw) = part.split_once('=').ok_or(XferError::Bad("key=value"))?;
            let key = key.trim().to_ascii_lowercase();
            let raw = raw.trim();
            match key.as_str() {
                "node" => set(
                    &mut node,
                    "node",
                    decode(raw).ok_or(XferError::Bad("node"))?,
                )?,
                "id" => set(&mut id, "id", decode(raw).ok_or(XferError::Bad("id"))?)?,
                "customer" => set(
                    &mut customer,
                    "customer",
                    decode(raw).ok_or(XferError::Bad("customer"))?,
                )?,
                "received" => set(
                    &mut received_s,
                    "received",
                    raw.parse().map_err(|_| XferError::Bad("received"))?,
                )?,
                "attempts" => set(
                    &mut attempts,
                    "attempts",
                    raw.parse().map_err(|_| XferError::Bad("attempts"))?,
                )?,
                "campaign" => set(
                    &mut campaign,
                    "campaign",
                    decode(raw).ok_or(XferError::Bad("campaign"))?,
                )?,
                _ => {}
            }
        }
        let node: String = node.ok_or(XferError::Missing("node"))?;
        if node.is_empty() {
            return Err(XferError::Bad("node"));
        }
        Ok(Xfer {
            node,
            id: id.ok_or(XferError::Missing("id"))?,
            customer: customer.unwrap_or_default(),
            received_s: received_s.ok_or(XferError::Missing("received"))?,
            attempts: attempts.ok_or(XferError::Missing("attempts"))?,
            // Bounded and cleaned as the first node's intake did, since a peer's word is text.
            campaign: super::tags::sanitize(
                &campaign.unwrap_or_default(),
                super::tags::CAMPAIGN_BYTES_MAX,
            ),
        })
    }
}

fn set<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), XferError> {
    if slot.replace(value).is_some() {
        return Err(XferError::Repeated(key));
    }
    Ok(())
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._@+-".contains(&b)
}

/// Appends `value` percent-encoded (UTF-8 bytes outside the plain set as `%XX`).
fn encode(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The text `raw` encodes; `None` for a bad escape or bytes that are not UTF-8.
fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Xfer {
        Xfer {
            node: "mta-1.eu".into(),
            id: "00000000002A-00".into(),
            customer: "acme".into(),
            received_s: 1_790_000_000,
            attempts: 3,
            campaign: String::new(),
        }
    }

    fn value_of(line: &str) -> &str {
        line.strip_prefix("X-Volley-Xfer:")
            .and_then(|v| v.strip_suffix("\r\n"))
            .expect("a header line")
    }

    #[test]
    fn the_header_line_reads() {
        assert_eq!(
            sample().header_line(),
            "X-Volley-Xfer: node=mta-1.eu; id=00000000002A-00; customer=acme; \
             received=1790000000; attempts=3\r\n"
        );
    }

    #[test]
    fn formatting_and_parsing_round_trip() {
        let odd = Xfer {
            customer: "a;b=c d%é\r\nX-Evil: 1".into(),
            ..sample()
        };
        let empty = Xfer {
            customer: String::new(),
            attempts: 0,
            ..sample()
        };
        let campaign = Xfer {
            campaign: "spring sale; 2026".into(),
            ..sample()
        };
        for x in [sample(), odd, empty, campaign] {
            let line = x.header_line();
            assert_eq!(line.matches("\r\n").count(), 1, "one line: {line:?}");
            assert!(line.is_ascii(), "{line:?}");
            assert_eq!(Xfer::parse(value_of(&line)), Ok(x));
        }
    }

    #[test]
    fn parsing_is_lenient_about_spacing_order_case_and_unknown_keys() {
        let x = Xfer::parse(
            " Attempts=3;RECEIVED=1790000000 ;\r\n\tcustomer=acme; future=x; id=00000000002A-00;node=mta-1.eu;",
        );
        assert_eq!(x, Ok(sample()));
        let no_customer = Xfer::parse("node=n; id=1; received=5; attempts=0").unwrap();
        assert_eq!(no_customer.customer, "");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let cases = [
            ("id=1; received=5; attempts=0", XferError::Missing("node")),
            (
                "node=; id=1; received=5; attempts=0",
                XferError::Bad("node"),
            ),
            ("node=n; received=5; attempts=0", XferError::Missing("id")),
            ("node=n; id=1; attempts=0", XferError::Missing("received")),
            ("node=n; id=1; received=5", XferError::Missing("attempts")),
            (
                "node=n; id=1; received=-5; attempts=0",
                XferError::Bad("received"),
            ),
            (
                "node=n; id=1; received=5; attempts=x",
                XferError::Bad("attempts"),
            ),
            (
                "node=n; id=1; received=5; attempts=9999999999",
                XferError::Bad("attempts"),
            ),
            (
                "node=n n; id=1; received=5; attempts=0",
                XferError::Bad("node"),
            ),
            (
                "node=%zz; id=1; received=5; attempts=0",
                XferError::Bad("node"),
            ),
            (
                "node=%4; id=1; received=5; attempts=0",
                XferError::Bad("node"),
            ),
            (
                "node=%FF; id=1; received=5; attempts=0",
                XferError::Bad("node"),
            ),
            (
                "node=n; node=m; id=1; received=5; attempts=0",
                XferError::Repeated("node"),
            ),
            (
                "node=n; id=1; received=5; attempts=0; junk",
                XferError::Bad("key=value"),
            ),
        ];
        for (value, error) in cases {
            assert_eq!(Xfer::parse(value), Err(error), "{value}");
        }
        let long = format!(
            "node=n; id=1; received=5; attempts=0; pad={}",
            "x".repeat(2000)
        );
        assert_eq!(Xfer::parse(&long), Err(XferError::TooLong));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let alphabet = b"node=;id%0aF \t\r\nreceived12attempts\xc3\xa9";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 60) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((state >> (i % 50)) as usize + i) % alphabet.len()])
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = Xfer::parse(&text);
        }
    }
}
