//! What happens to a message between the end of DATA and the 250: the customer is found, trace and
//! missing headers are added, the spool makes it durable, and its recipients go to their queues.

use std::sync::Arc;

use crate::accounting::{AccountingEvent, EventType};
use crate::envelope::{Envelope, MessageId};
use crate::runtime::CoreContext;
use crate::smtp::reply::{EnhancedCode, Reply};
use crate::spool::SpoolError;

/// The header that names the customer on relay listeners; removed before the message is spooled.
pub const CUSTOMER_HEADER: &str = "X-Volley-Customer";

/// Where a message came from, for its Received: line.
pub struct Origin<'a> {
    pub helo: &'a str,
    pub ip: std::net::IpAddr,
    pub protocol: &'a str,
    /// The AUTH identity, when the client authenticated.
    pub authenticated: Option<&'a str>,
}

/// The end of the header block (the index of the empty line's first byte), or the body's length.
fn header_end(body: &[u8]) -> usize {
    if body.starts_with(b"\r\n") {
        return 0;
    }
    memchr::memmem::find(body, b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(body.len())
}

/// Finds a header field (case-insensitive name) in the header block: (start, end incl. folded
/// continuation lines and CRLF, value trimmed).
pub fn find_header<'b>(body: &'b [u8], name: &str) -> Option<(usize, usize, &'b [u8])> {
    let end = header_end(body);
    let mut pos = 0;
    while pos < end {
        let line_end = memchr::memmem::find(&body[pos..end], b"\r\n")
            .map(|i| pos + i + 2)
            .unwrap_or(end);
        let line = &body[pos..line_end];
        let matches = line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()] == b':';
        // Continuation lines start with white space.
        let mut field_end = line_end;
        while field_end < end && matches!(body[field_end], b' ' | b'\t') {
            field_end = memchr::memmem::find(&body[field_end..end], b"\r\n")
                .map(|i| field_end + i + 2)
                .unwrap_or(end);
        }
        if matches {
            let value = body[pos + name.len() + 1..field_end].trim_ascii();
            return Some((pos, field_end, value));
        }
        pos = field_end;
    }
    None
}

/// The customer named by the `X-Volley-Customer` header, and the body without that header.
pub fn take_customer_header(body: Vec<u8>) -> (Option<String>, Vec<u8>) {
    match find_header(&body, CUSTOMER_HEADER) {
        Some((start, end, value)) => {
            let name = String::from_utf8_lossy(value).into_owned();
            let mut stripped = Vec::with_capacity(body.len() - (end - start));
            stripped.extend_from_slice(&body[..start]);
            stripped.extend_from_slice(&body[end..]);
            (Some(name), stripped)
        }
        None => (None, body),
    }
}

/// The trace and submission headers put in front of the body.
pub fn prefix_headers(
    origin: &Origin,
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
    let auth = origin
        .authenticated
        .map(|a| format!(" (authenticated as {a})"))
        .unwrap_or_default();
    let mut header = format!(
        "Received: from {} ([{}]){auth}\r\n\tby {hostname} (Volley) with {} id {id}{for_clause};\r\n\t{date}\r\n",
        origin.helo, origin.ip, origin.protocol
    );
    // RFC 6409 section 8: a submission server may add what the client left out.
    if origin.authenticated.is_some() {
        if find_header(body, "Message-ID").is_none() {
            header.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
        }
        if find_header(body, "Date").is_none() {
            header.push_str(&format!("Date: {date}\r\n"));
        }
    }
    header.into_bytes()
}

/// Puts a `DKIM-Signature:` under the Received: line of `header` when a `[[dkim]]` entry signs
/// for the message. The signature covers the message as stored (the headers Volley added after
/// Received: included), not the Received: line. A failure is logged and the message goes unsigned.
pub fn dkim_sign(
    core: &CoreContext,
    header: Vec<u8>,
    body: &[u8],
    envelope_sender: &str,
    now_s: u64,
) -> Vec<u8> {
    let signers = core.dkim_signers();
    if signers.is_empty() {
        return header;
    }
    // prefix_headers puts Received: first; what follows it is part of the signed message.
    let received_len = crate::dkim::split_message(&header)
        .0
        .first()
        .map_or(0, |f| f.raw.len());
    let (received, added) = header.split_at(received_len.min(header.len()));
    let signed_input: std::borrow::Cow<[u8]> = if added.is_empty() {
        std::borrow::Cow::Borrowed(body)
    } else {
        std::borrow::Cow::Owned([added, body].concat())
    };
    let counters = core.counters();
    match signers.sign(&signed_input, envelope_sender, now_s) {
        Ok(Some(signature)) => {
            counters
                .dkim_signed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            [received, &signature, added].concat()
        }
        Ok(None) => header,
        Err(e) => {
            counters
                .dkim_sign_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::error!("dkim: message sent unsigned: {e}");
            header
        }
    }
}

/// Counts a spooled message and writes its reception events (one per recipient), whichever way it
/// came in (SMTP or the API).
pub fn record_reception(
    core: &CoreContext,
    id: MessageId,
    envelope: &Envelope,
    size: u64,
    started: std::time::Instant,
) {
    let counters = core.counters();
    counters
        .messages_received
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    counters.recipients_received.fetch_add(
        envelope.recipients.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    counters
        .bytes_received
        .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
    counters
        .accept_latency
        .record_us(started.elapsed().as_micros() as u64);
    let id_text = id.to_string();
    for r in &envelope.recipients {
        core.accounting.record(&AccountingEvent {
            kind: Some(EventType::Reception),
            time: crate::clock::now_rfc3339(),
            id: id_text.clone(),
            customer: envelope.customer.clone(),
            sender: envelope.sender.clone(),
            recipient: r.address.clone(),
            domain: r.domain(),
            size_bytes: size,
            ..Default::default()
        });
    }
}

/// Spools a message and routes its recipients; the reply text is the queue id.
pub async fn accept_message(
    core: &std::rc::Rc<CoreContext>,
    origin: &Origin<'_>,
    mut envelope: Envelope,
    body: Vec<u8>,
    relay_trusted: bool,
) -> Result<String, Reply> {
    let started = std::time::Instant::now();
    let (named, body) = take_customer_header(body);
    envelope.customer = match (origin.authenticated, named) {
        (Some(user), _) => user.to_string(),
        // Only trusted relay clients may say whose mail this is.
        (None, Some(name)) if relay_trusted => name,
        _ => String::new(),
    };
    let charge = core.charge_customer(&envelope.customer)?;
    let now_s = crate::clock::unix_s();
    envelope.received_at_s = now_s;
    let config = core.config();
    let id = core.spool.next_id();
    let header = prefix_headers(origin, &config.server.hostname, id, &envelope, &body, now_s);
    let header = dkim_sign(core, header, &body, &envelope.sender, now_s);
    let size = (header.len() + body.len()) as u64;
    if !core.spool.has_room(size) {
        core.refund_customer(&envelope.customer, charge);
        return Err(Reply::new(
            452,
            Some(EnhancedCode::new(4, 3, 1)),
            "Insufficient system storage, try again later",
        ));
    }
    let stored = core.spool.store(id, &envelope, &header, &body).await;
    if stored.is_err() {
        core.refund_customer(&envelope.customer, charge);
    }
    let location = match stored {
        Ok(l) => l,
        Err(SpoolError::Full) => {
            return Err(Reply::new(
                452,
                Some(EnhancedCode::new(4, 3, 1)),
                "Insufficient system storage, try again later",
            ));
        }
        Err(e) => {
            log::error!("spool store failed: {e}");
            return Err(Reply::new(
                451,
                Some(EnhancedCode::new(4, 3, 0)),
                "Local error in processing, try again later",
            ));
        }
    };
    record_reception(core, id, &envelope, size, started);
    crate::delivery::route_new_message(core, id, location, Arc::new(envelope), now_s).await;
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_header_is_found_and_removed() {
        let body = b"From: a@b\r\nX-Volley-Customer: acme\r\nSubject: hi\r\n\r\nX-Volley-Customer: not a header\r\n".to_vec();
        let (name, rest) = take_customer_header(body);
        assert_eq!(name.as_deref(), Some("acme"));
        assert_eq!(
            rest,
            b"From: a@b\r\nSubject: hi\r\n\r\nX-Volley-Customer: not a header\r\n".to_vec()
        );
    }

    #[test]
    fn folded_header_is_removed_whole() {
        let body = b"x-volley-customer: ac\r\n me\r\nSubject: s\r\n\r\nbody\r\n".to_vec();
        let (name, rest) = take_customer_header(body);
        assert_eq!(name.as_deref(), Some("ac\r\n me"));
        assert_eq!(rest, b"Subject: s\r\n\r\nbody\r\n".to_vec());
    }

    #[test]
    fn headers_only_searched_in_header_block() {
        assert!(find_header(b"Subject: x\r\n\r\nDate: y\r\n", "Date").is_none());
        assert!(find_header(b"Date: y\r\n", "Date").is_some());
    }

    #[test]
    fn submission_adds_missing_message_id_and_date() {
        let origin = Origin {
            helo: "client.test",
            ip: "127.0.0.1".parse().unwrap(),
            protocol: "ESMTPSA",
            authenticated: Some("acme"),
        };
        let env = Envelope {
            recipients: vec![crate::envelope::Recipient::new("r@example.test")],
            ..Default::default()
        };
        let id = MessageId { core: 0, seq: 1 };
        let h = prefix_headers(
            &origin,
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
        let relay = Origin {
            authenticated: None,
            ..origin
        };
        let h =
            String::from_utf8(prefix_headers(&relay, "mta.test", id, &env, b"\r\n", 0)).unwrap();
        assert!(!h.contains("Message-ID"), "{h}");
    }
}
