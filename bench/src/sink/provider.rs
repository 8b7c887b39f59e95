//! Provider-style reply texts (`sink --provider-replies`): a message whose first recipient is at
//! `gmail.test`, `yahoo.test` or `outlook.test` (or `hotmail.test`) is answered the way those
//! providers answer, so that the engine's reply parsing, accounting and adaptive backoff meet
//! realistic text.
//!
//! Sources: the texts imitate the shapes of replies that the providers publish or that appear in
//! countless public bounce messages: Google's "SMTP errors and codes" help page (Gmail's
//! `... - gsmtp` suffix and the `OK <unix time> <id> - gsmtp` acceptance), Yahoo's public
//! postmaster "SMTP error codes" page (`[TSS04]` deferrals) and Microsoft's public Exchange Online
//! NDR documentation (`4.7.650`, `5.7.1 ... (S3150)`). They are written from those public shapes;
//! identifiers, numbers and wording details are made up, and nothing is copied from anywhere
//! proprietary.

use std::io::Write;
use std::net::IpAddr;

use super::session::Verdict;

/// A provider whose reply style the sink imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Gmail.
    Gmail,
    /// Yahoo.
    Yahoo,
    /// Outlook.com / Hotmail.
    Outlook,
}

/// What a provider-style reply may mention.
#[derive(Debug, Clone, Copy)]
pub struct ReplyFacts<'a> {
    /// The client's address.
    pub peer_ip: IpAddr,
    /// Seconds since the Unix epoch.
    pub unix_s: u64,
    /// Varies per message; makes the queue-like identifiers differ.
    pub serial: u64,
    /// The message's size after removing dot-stuffing.
    pub message_bytes: u64,
    /// The Message-ID, if known.
    pub message_id: Option<&'a str>,
}

/// How the sink must go on after a provider reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// Keep the session.
    Continue,
    /// The reply was a 421: close the connection (RFC 5321 §3.8).
    Close,
}

impl Provider {
    /// The provider a recipient address belongs to, by its domain (`*.gmail.test` counts too).
    pub fn of_address(address: &str) -> Option<Provider> {
        let domain = address.rsplit_once('@').map_or(address, |(_, d)| d);
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let is = |name: &str| domain == name || domain.ends_with(&format!(".{name}"));
        if is("gmail.test") || is("googlemail.test") {
            Some(Provider::Gmail)
        } else if is("yahoo.test") || is("aol.test") {
            Some(Provider::Yahoo)
        } else if is("outlook.test") || is("hotmail.test") || is("live.test") {
            Some(Provider::Outlook)
        } else {
            None
        }
    }

    /// Appends the end-of-data reply for `verdict` (CRLF-terminated, possibly multi-line).
    pub fn write_reply(
        self,
        verdict: Verdict,
        facts: &ReplyFacts<'_>,
        out: &mut Vec<u8>,
    ) -> AfterReply {
        let ip = facts.peer_ip;
        let id = gmail_like_id(facts.serial);
        match (self, verdict) {
            (Provider::Gmail, Verdict::Accept) => {
                let _ = write!(out, "250 2.0.0 OK  {} {id} - gsmtp\r\n", facts.unix_s);
                AfterReply::Continue
            }
            (Provider::Gmail, Verdict::TempFail) => {
                let _ = write!(
                    out,
                    "421-4.7.0 [{ip}] Our system has detected an unusual rate of unsolicited\r\n\
421-4.7.0 mail originating from your IP address. To protect our users from\r\n\
421-4.7.0 spam, mail sent from your IP address has been temporarily rate\r\n\
421 4.7.0 limited. Try again later, closing connection. {id} - gsmtp\r\n"
                );
                AfterReply::Close
            }
            (Provider::Gmail, Verdict::PermFail) => {
                let _ = write!(
                    out,
                    "550-5.1.1 The email account that you tried to reach does not exist. Please\r\n\
550-5.1.1 try double-checking the recipient's email address for typos or\r\n\
550 5.1.1 unnecessary spaces. {id} - gsmtp\r\n"
                );
                AfterReply::Continue
            }
            (Provider::Yahoo, Verdict::Accept) => {
                out.extend_from_slice(b"250 ok dirdel\r\n");
                AfterReply::Continue
            }
            (Provider::Yahoo, Verdict::TempFail) => {
                let _ = write!(
                    out,
                    "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected \
volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.test/error-codes\r\n"
                );
                AfterReply::Close
            }
            (Provider::Yahoo, Verdict::PermFail) => {
                out.extend_from_slice(
                    b"554 5.7.9 Message not accepted for policy reasons.  See \
https://postmaster.yahooinc.test/error-codes\r\n",
                );
                AfterReply::Continue
            }
            (Provider::Outlook, Verdict::Accept) => {
                let _ = write!(
                    out,
                    "250 2.6.0 {} [InternalId={}, Hostname=XX0PR00MB{:04}.prod.outlook.test] {} bytes \
in 0.012, 83.321 KB/sec Queued mail for delivery\r\n",
                    facts.message_id.unwrap_or("<unknown@volley-bench>"),
                    facts.serial.wrapping_mul(7919) % 100_000_000_000,
                    facts.serial % 10_000,
                    facts.message_bytes
                );
                AfterReply::Continue
            }
            (Provider::Outlook, Verdict::TempFail) => {
                let _ = write!(
                    out,
                    "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP \
reputation. For e-mail delivery information, see https://postmaster.outlook.test (S775)\r\n"
                );
                AfterReply::Continue
            }
            (Provider::Outlook, Verdict::PermFail) => {
                let _ = write!(
                    out,
                    "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your \
Internet service provider since part of their network is on our block list (S3150).\r\n"
                );
                AfterReply::Continue
            }
        }
    }
}

/// An identifier in the shape of Gmail's per-transaction ids (`a1-20020a05...si1234567wmb.42`).
fn gmail_like_id(serial: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(serial);
    format!(
        "{}{}-20020a05{:06x}{:08x}si{}wmb.{}",
        char::from(b'a' + rng.u8(..26)),
        rng.u8(..100),
        rng.u32(..0x100_0000),
        rng.u32(..),
        rng.u32(1_000_000..10_000_000),
        rng.u16(..1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ReplyFacts<'static> {
        ReplyFacts {
            peer_ip: IpAddr::from([127, 0, 0, 1]),
            unix_s: 1_700_000_000,
            serial: 42,
            message_bytes: 1024,
            message_id: Some("<m@x>"),
        }
    }

    fn reply(p: Provider, v: Verdict) -> (String, AfterReply) {
        let mut out = Vec::new();
        let after = p.write_reply(v, &facts(), &mut out);
        (String::from_utf8(out).unwrap(), after)
    }

    #[test]
    fn providers_by_domain() {
        assert_eq!(Provider::of_address("a@gmail.test"), Some(Provider::Gmail));
        assert_eq!(
            Provider::of_address("a@MX.Yahoo.test"),
            Some(Provider::Yahoo)
        );
        assert_eq!(
            Provider::of_address("a@hotmail.test"),
            Some(Provider::Outlook)
        );
        assert_eq!(Provider::of_address("a@notgmail.test"), None);
        assert_eq!(Provider::of_address("a@d0.test"), None);
    }

    #[test]
    fn replies_are_well_formed_smtp() {
        for p in [Provider::Gmail, Provider::Yahoo, Provider::Outlook] {
            for v in [Verdict::Accept, Verdict::TempFail, Verdict::PermFail] {
                let (text, after) = reply(p, v);
                let lines: Vec<&str> = text.split_terminator("\r\n").collect();
                let code = &lines[0][..3];
                for (i, line) in lines.iter().enumerate() {
                    assert!(line.len() <= 512, "{line}");
                    assert_eq!(&line[..3], code);
                    let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                    assert_eq!(line.as_bytes()[3], sep as u8, "{text}");
                }
                let expected = match v {
                    Verdict::Accept => '2',
                    Verdict::TempFail => '4',
                    Verdict::PermFail => '5',
                };
                assert!(code.starts_with(expected), "{text}");
                assert_eq!(after == AfterReply::Close, code == "421", "{text}");
            }
        }
        let (gmail_ok, _) = reply(Provider::Gmail, Verdict::Accept);
        assert!(gmail_ok.starts_with("250 2.0.0 OK  1700000000 "));
        assert!(gmail_ok.ends_with(" - gsmtp\r\n"));
        assert!(
            reply(Provider::Gmail, Verdict::TempFail)
                .0
                .contains("Try again later")
        );
        assert!(
            reply(Provider::Outlook, Verdict::Accept)
                .0
                .contains("<m@x>")
        );
    }
}
