//! The header lines intake puts in front of a message: the `Received:` trace line (RFC 5321 4.4)
//! and, for authenticated submission, the `Message-ID:` and `Date:` the client left out
//! (RFC 6409 section 8).

use std::net::IpAddr;

use crate::envelope::{Envelope, MessageId};
use crate::rfc5322::find_field;

/// Who handed the message over, as the trace line names them.
pub struct Sender<'a> {
    /// EHLO name, or what stands for it (`api`).
    pub helo: &'a str,
    /// The client's address; none for mail made here (DSNs).
    pub ip: Option<IpAddr>,
    pub protocol: &'a str,
    /// The AUTH identity, when the client authenticated.
    pub authenticated: Option<&'a str>,
}

/// The trace and submission headers put in front of `body`.
pub fn prefix_headers(
    sender: &Sender,
    hostname: &str,
    id: MessageId,
    envelope: &Envelope,
    body: &[u8],
    now_s: u64,
) -> Vec<u8> {
    let date = crate::clock::rfc5322_date(now_s);
    let for_clause = match envelope.recipients.as_slice() {
        [only] => format!("\r\n\tfor <{}>", only.address),
        _ => String::new(),
    };
    let auth = sender
        .authenticated
        .map(|a| format!(" (authenticated as {a})"))
        .unwrap_or_default();
    let from = match sender.ip {
        Some(ip) => format!("from {} ([{ip}]){auth}\r\n\t", sender.helo),
        None => String::new(),
    };
    let mut header = format!(
        "Received: {from}by {hostname} (Volley) with {} id {id}{for_clause};\r\n\t{date}\r\n",
        sender.protocol
    );
    if sender.authenticated.is_some() {
        if find_field(body, "Message-ID").is_none() {
            header.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
        }
        if find_field(body, "Date").is_none() {
            header.push_str(&format!("Date: {date}\r\n"));
        }
    }
    header.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_recipient() -> Envelope {
        Envelope {
            recipients: vec![crate::envelope::Recipient::new("r@example.test")],
            ..Default::default()
        }
    }

    #[test]
    fn submission_adds_missing_message_id_and_date() {
        let sender = Sender {
            helo: "client.test",
            ip: Some("127.0.0.1".parse().unwrap()),
            protocol: "ESMTPSA",
            authenticated: Some("acme"),
        };
        let env = one_recipient();
        let id = MessageId { core: 0, seq: 1 };
        let h = prefix_headers(
            &sender,
            "mta.test",
            id,
            &env,
            b"Subject: x\r\n\r\nhi\r\n",
            0,
        );
        let h = String::from_utf8(h).unwrap();
        assert!(
            h.starts_with("Received: from client.test ([127.0.0.1])"),
            "{h}"
        );
        assert!(h.contains("with ESMTPSA id"), "{h}");
        assert!(h.contains("for <r@example.test>"), "{h}");
        assert!(h.contains("Message-ID: <"), "{h}");
        assert!(h.contains("\r\nDate: "), "{h}");
        let relay = Sender {
            authenticated: None,
            ..sender
        };
        let h =
            String::from_utf8(prefix_headers(&relay, "mta.test", id, &env, b"\r\n", 0)).unwrap();
        assert!(!h.contains("Message-ID"), "{h}");
    }

    #[test]
    fn mail_made_here_has_no_from_clause() {
        let sender = Sender {
            helo: "",
            ip: None,
            protocol: "local",
            authenticated: None,
        };
        let id = MessageId { core: 0, seq: 7 };
        let h = prefix_headers(&sender, "mta.test", id, &one_recipient(), b"\r\n", 0);
        let h = String::from_utf8(h).unwrap();
        assert!(
            h.starts_with("Received: by mta.test (Volley) with local id"),
            "{h}"
        );
    }
}
