//! The header lines intake puts in front of a message: the `Received:` trace line (RFC 5321 4.4),
//! the `Message-ID:` and `Date:` the client left out (RFC 6409 section 8 for submission; on every
//! way in, as Postfix's cleanup does, since Gmail refuses mail without a Message-ID), and a
//! customer's one-click unsubscribe headers (RFC 8058) when the message has none.

use std::io::Write;
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

/// The trace and submission headers put in front of `body`. `unsubscribe`: the customer's
/// one-click URL for this message's one recipient, when it has `list_unsubscribe`.
pub fn prefix_headers(
    sender: &Sender,
    hostname: &str,
    id: MessageId,
    envelope: &Envelope,
    body: &[u8],
    now_s: u64,
    unsubscribe: Option<&str>,
) -> Vec<u8> {
    // Appended piece by piece into one buffer: this runs for every message.
    let date = crate::clock::rfc5322_date(now_s);
    let mut header = Vec::with_capacity(256 + 2 * hostname.len() + sender.helo.len());
    header.extend_from_slice(b"Received: ");
    if let Some(ip) = sender.ip {
        header.extend_from_slice(b"from ");
        header.extend_from_slice(sender.helo.as_bytes());
        header.extend_from_slice(b" ([");
        let _ = write!(header, "{ip}");
        header.extend_from_slice(b"])");
        if let Some(auth) = sender.authenticated {
            header.extend_from_slice(b" (authenticated as ");
            header.extend_from_slice(auth.as_bytes());
            header.push(b')');
        }
        header.extend_from_slice(b"\r\n\t");
    }
    header.extend_from_slice(b"by ");
    header.extend_from_slice(hostname.as_bytes());
    header.extend_from_slice(b" (Volley) with ");
    header.extend_from_slice(sender.protocol.as_bytes());
    header.extend_from_slice(b" id ");
    id.write_to(&mut header);
    if let [only] = envelope.recipients.as_slice() {
        header.extend_from_slice(b"\r\n\tfor <");
        header.extend_from_slice(only.address.as_bytes());
        header.push(b'>');
    }
    header.extend_from_slice(b";\r\n\t");
    header.extend_from_slice(date.as_bytes());
    header.extend_from_slice(b"\r\n");
    if find_field(body, "Message-ID").is_none() {
        header.extend_from_slice(b"Message-ID: <");
        id.write_to(&mut header);
        header.push(b'@');
        header.extend_from_slice(hostname.as_bytes());
        header.extend_from_slice(b">\r\n");
    }
    if find_field(body, "Date").is_none() {
        header.extend_from_slice(b"Date: ");
        header.extend_from_slice(date.as_bytes());
        header.extend_from_slice(b"\r\n");
    }
    // RFC 8058 needs both: a List-Unsubscribe the sender wrote is the sender's choice, kept as is.
    if let (Some(url), [_]) = (unsubscribe, envelope.recipients.as_slice())
        && find_field(body, "List-Unsubscribe").is_none()
    {
        header.extend_from_slice(b"List-Unsubscribe: <");
        header.extend_from_slice(url.as_bytes());
        header.extend_from_slice(b">\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    }
    header
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
            None,
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
        // Relay and the API too; what the client wrote is kept.
        let relay = Sender {
            authenticated: None,
            ..sender
        };
        let h = String::from_utf8(prefix_headers(
            &relay, "mta.test", id, &env, b"\r\n", 0, None,
        ))
        .unwrap();
        assert!(h.contains("Message-ID: <"), "{h}");
        let written = b"Message-ID: <a@b>\r\nDate: Tue, 1 Dec 2026 00:00:00 +0000\r\n\r\nhi\r\n";
        let h = String::from_utf8(prefix_headers(
            &relay, "mta.test", id, &env, written, 0, None,
        ))
        .unwrap();
        assert!(!h.contains("Message-ID") && !h.contains("Date:"), "{h}");
    }

    #[test]
    fn the_whole_trace_text() {
        let sender = Sender {
            helo: "client.test",
            ip: Some("127.0.0.1".parse().unwrap()),
            protocol: "ESMTPSA",
            authenticated: Some("acme"),
        };
        let id = MessageId { core: 1, seq: 0x2a };
        let h = prefix_headers(
            &sender,
            "mta.test",
            id,
            &one_recipient(),
            b"\r\n",
            1_057_056_757,
            None,
        );
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "Received: from client.test ([127.0.0.1]) (authenticated as acme)\r\n\t\
             by mta.test (Volley) with ESMTPSA id 00000000002A-01\r\n\tfor <r@example.test>;\r\n\t\
             Tue, 01 Jul 2003 10:52:37 +0000\r\n\
             Message-ID: <00000000002A-01@mta.test>\r\n\
             Date: Tue, 01 Jul 2003 10:52:37 +0000\r\n"
        );
    }

    #[test]
    fn unsubscribe_headers_for_one_recipient_without_their_own() {
        let sender = Sender {
            helo: "client.test",
            ip: None,
            protocol: "ESMTP",
            authenticated: None,
        };
        let id = MessageId { core: 0, seq: 2 };
        let url = Some("https://u.test/T");
        let h = |env: &Envelope, body: &[u8]| {
            String::from_utf8(prefix_headers(&sender, "mta.test", id, env, body, 0, url)).unwrap()
        };
        let added = h(&one_recipient(), b"Subject: x\r\n\r\nhi\r\n");
        assert!(
            added.contains("List-Unsubscribe: <https://u.test/T>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{added}"
        );
        let own = h(
            &one_recipient(),
            b"List-Unsubscribe: <mailto:x@y>\r\n\r\nhi\r\n",
        );
        assert!(!own.contains("List-Unsubscribe"), "{own}");
        let two = Envelope {
            recipients: vec![
                crate::envelope::Recipient::new("a@example.test"),
                crate::envelope::Recipient::new("b@example.test"),
            ],
            ..Default::default()
        };
        assert!(!h(&two, b"\r\n").contains("List-Unsubscribe"));
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
        let h = prefix_headers(&sender, "mta.test", id, &one_recipient(), b"\r\n", 0, None);
        let h = String::from_utf8(h).unwrap();
        assert!(
            h.starts_with("Received: by mta.test (Volley) with local id"),
            "{h}"
        );
    }
}
