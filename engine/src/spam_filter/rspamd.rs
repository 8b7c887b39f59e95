//! rspamd's `/checkv2`: the message as the body, the envelope in headers (`From`, `Rcpt`, `IP`,
//! `Helo`, `User`, `Queue-Id`), a JSON answer with the action, the score and the symbols.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::SpamFilterError;

/// Symbols kept from an answer (sorted by score, highest first), for events and headers.
pub const SYMBOLS_MAX: usize = 20;
/// An answer read at most.
const REPLY_BYTES_MAX: u64 = 1 << 20;

/// rspamd's action (its `actions` configuration decides which one a score gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reject,
    SoftReject,
    RewriteSubject,
    AddHeader,
    Greylist,
    NoAction,
    /// An action this version does not know: treated as none.
    Other,
}

impl Action {
    fn from_name(name: &str) -> Action {
        match name {
            "reject" => Action::Reject,
            "soft reject" => Action::SoftReject,
            "rewrite subject" => Action::RewriteSubject,
            "add header" => Action::AddHeader,
            "greylist" => Action::Greylist,
            "no action" => Action::NoAction,
            _ => Action::Other,
        }
    }
}

/// rspamd's verdict on one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub action: Action,
    pub score: f64,
    pub required_score: f64,
    /// The symbols that matched, highest score first (at most `SYMBOLS_MAX`).
    pub symbols: Vec<String>,
    /// rspamd's `smtp_message`, if any (e.g. "Gtube pattern").
    pub message: String,
}

impl Verdict {
    /// `X-Spam`, `X-Spam-Score` and `X-Spam-Symbols` header lines, CRLF-ended.
    pub fn spam_headers(&self) -> String {
        format!(
            "X-Spam: Yes\r\nX-Spam-Score: {:.2} / {:.2}\r\nX-Spam-Symbols: {}\r\n",
            self.score,
            self.required_score,
            self.symbols.join(", ")
        )
    }

    /// `score 15.00, symbols GTUBE` for replies and events.
    pub fn summary(&self) -> String {
        format!(
            "score {:.2}, symbols {}",
            self.score,
            self.symbols.join(" ")
        )
    }
}

#[derive(Deserialize)]
struct Reply {
    action: String,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    required_score: f64,
    #[serde(default)]
    symbols: std::collections::BTreeMap<String, Symbol>,
    #[serde(default)]
    messages: Messages,
}

#[derive(Deserialize)]
struct Symbol {
    #[serde(default)]
    score: f64,
}

#[derive(Deserialize, Default)]
struct Messages {
    #[serde(default)]
    smtp_message: String,
}

/// Reads a `/checkv2` answer.
pub fn parse_reply(body: &[u8]) -> Result<Verdict, SpamFilterError> {
    let reply: Reply =
        serde_json::from_slice(body).map_err(|e| SpamFilterError::Reply(e.to_string()))?;
    let mut symbols: Vec<(String, f64)> = reply
        .symbols
        .into_iter()
        .map(|(name, s)| (name, s.score))
        .collect();
    symbols.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Verdict {
        action: Action::from_name(&reply.action),
        score: reply.score,
        required_score: reply.required_score,
        symbols: symbols
            .into_iter()
            .take(SYMBOLS_MAX)
            .map(|(name, _)| name.chars().filter(|c| c.is_ascii_graphic()).collect())
            .collect(),
        message: reply
            .messages
            .smtp_message
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect(),
    })
}

/// The envelope rspamd is told about.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub client_ip: Option<IpAddr>,
    pub helo: &'a str,
    /// The authenticated customer, if any.
    pub user: Option<&'a str>,
    pub queue_id: &'a str,
}

/// Asks rspamd at `url` (its base, e.g. `http://127.0.0.1:11333`) about `message`. Blocking: run it
/// on a blocking pool. Every step is bounded by `timeout_ms`.
pub fn check(
    url: &str,
    timeout_ms: u64,
    envelope: &Envelope<'_>,
    message: &[u8],
) -> Result<Verdict, SpamFilterError> {
    let t = Some(Duration::from_millis(timeout_ms));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(t)
        .build()
        .into();
    let endpoint = format!("{}/checkv2", url.trim_end_matches('/'));
    let mut request = agent
        .post(&endpoint)
        .header("From", envelope.sender)
        .header("Queue-Id", envelope.queue_id);
    for r in envelope.recipients {
        request = request.header("Rcpt", r.as_str());
    }
    if let Some(ip) = envelope.client_ip {
        request = request.header("IP", ip.to_string());
    }
    if !envelope.helo.is_empty() {
        request = request.header("Helo", envelope.helo);
    }
    if let Some(user) = envelope.user {
        request = request.header("User", user);
    }
    let mut response = request
        .send(message)
        .map_err(|e| SpamFilterError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(SpamFilterError::Status(status));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(REPLY_BYTES_MAX)
        .read_to_vec()
        .map_err(|e| SpamFilterError::Http(e.to_string()))?;
    parse_reply(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gtube_answer_reads_as_reject_with_its_symbols() {
        let body = br#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"x@b.test"}"#;
        let v = parse_reply(body).unwrap();
        assert_eq!(v.action, Action::Reject);
        assert_eq!(v.score, 15.0);
        assert_eq!(v.symbols, vec!["GTUBE"]);
        assert_eq!(v.message, "Gtube pattern");
        assert_eq!(v.summary(), "score 15.00, symbols GTUBE");
    }

    #[test]
    fn symbols_are_sorted_by_score_and_bounded() {
        let mut symbols = String::new();
        for i in 0..30 {
            if i > 0 {
                symbols.push(',');
            }
            symbols.push_str(&format!("\"S{i}\":{{\"score\":{i}.0}}"));
        }
        let body = format!(
            r#"{{"action":"add header","score":9,"required_score":15,"symbols":{{{symbols}}}}}"#
        );
        let v = parse_reply(body.as_bytes()).unwrap();
        assert_eq!(v.action, Action::AddHeader);
        assert_eq!(v.symbols.len(), SYMBOLS_MAX);
        assert_eq!(v.symbols[0], "S29");
        assert!(parse_reply(b"not json").is_err());
        assert_eq!(
            parse_reply(br#"{"action":"something new"}"#)
                .unwrap()
                .action,
            Action::Other
        );
    }

    #[test]
    fn an_unreachable_rspamd_is_an_error_within_the_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let started = std::time::Instant::now();
        let e = check(
            &url,
            500,
            &Envelope {
                sender: "a@b.test",
                recipients: &["c@d.test".to_string()],
                client_ip: None,
                helo: "",
                user: None,
                queue_id: "1",
            },
            b"Subject: x\r\n\r\nhi\r\n",
        )
        .unwrap_err();
        assert!(matches!(e, SpamFilterError::Http(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
