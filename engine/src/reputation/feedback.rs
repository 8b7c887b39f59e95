//! Abuse reports in the Abuse Reporting Format (ARF, RFC 5965), as Yahoo's CFL and Outlook.com's
//! JMRP send them: a `multipart/report; report-type=feedback-report` with a human part, a
//! `message/feedback-report` part (Feedback-Type, Version, Original-Rcpt-To ...) and the original
//! message (`message/rfc822`) or its header (`text/rfc822-headers`). Pure parsing, bounded.

/// A report larger than this is refused (the API's body limit is higher; reports are small).
pub const REPORT_BYTES_MAX: usize = 1 << 20;
/// Parts of the multipart read at most.
const PARTS_MAX: usize = 16;
/// Header fields read per header section at most.
const FIELDS_MAX: usize = 200;

/// What a report says, as far as Volley acts on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Complaint {
    /// `abuse`, `fraud`, `not-spam`, ... (RFC 5965 section 7.3).
    pub feedback_type: String,
    pub user_agent: String,
    /// `Original-Rcpt-To` of the report (the complaining recipient), when given.
    pub original_rcpt_to: Option<String>,
    /// The original message's header fields that identify it.
    pub original_to: Option<String>,
    pub original_message_id: Option<String>,
    /// The original's `List-Unsubscribe` value (its token names customer and recipient).
    pub original_list_unsubscribe: Option<String>,
    pub source_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArfError {
    #[error("report over {REPORT_BYTES_MAX} bytes")]
    TooLarge,
    #[error("not a multipart/report with report-type=feedback-report")]
    NotAFeedbackReport,
    #[error("multipart without a boundary")]
    NoBoundary,
    #[error("no message/feedback-report part")]
    NoFeedbackPart,
    #[error("the feedback report has no {0} field")]
    MissingField(&'static str),
}

/// Header fields of a section (unfolded), and where its body starts.
fn header_fields(text: &str) -> (Vec<(String, String)>, &str) {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    loop {
        let (line, after) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return (fields, after);
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':')
            && fields.len() < FIELDS_MAX
        {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        if after.is_empty() {
            return (fields, "");
        }
        rest = after;
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// (`type/subtype` lowercased, its parameters with lowercased names, values unquoted).
fn content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = value.split(';');
    let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect();
    (kind, params)
}

/// The parts of a multipart body between `--boundary` lines.
fn parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    let mut current: Option<usize> = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.starts_with(&delimiter) {
            if let Some(start) = current.take() {
                out.push(&body[start..offset]);
                if out.len() >= PARTS_MAX {
                    return out;
                }
            }
            if bare[delimiter.len()..].starts_with("--") {
                return out;
            }
            current = Some(offset + line.len());
        }
        offset += line.len();
    }
    out
}

/// An address from `<a@b>`, `Name <a@b>` or `a@b`.
fn address(value: &str) -> Option<String> {
    let inner = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    let inner = inner.trim();
    (inner.contains('@') && !inner.contains([',', ' '])).then(|| inner.to_ascii_lowercase())
}

pub fn parse(report: &[u8]) -> Result<Complaint, ArfError> {
    if report.len() > REPORT_BYTES_MAX {
        return Err(ArfError::TooLarge);
    }
    let text = String::from_utf8_lossy(report);
    let (top, body) = header_fields(&text);
    let (kind, params) = content_type(field(&top, "content-type").unwrap_or(""));
    let report_type = params
        .iter()
        .find(|(k, _)| k == "report-type")
        .map(|(_, v)| v.to_ascii_lowercase());
    if kind != "multipart/report" || report_type.as_deref() != Some("feedback-report") {
        return Err(ArfError::NotAFeedbackReport);
    }
    let boundary = params
        .iter()
        .find(|(k, _)| k == "boundary")
        .map(|(_, v)| v.clone())
        .filter(|b| !b.is_empty())
        .ok_or(ArfError::NoBoundary)?;
    let mut complaint = None;
    let mut original: Option<Vec<(String, String)>> = None;
    for part in parts(body, &boundary) {
        let (headers, content) = header_fields(part);
        let (kind, _) = content_type(field(&headers, "content-type").unwrap_or("text/plain"));
        match kind.as_str() {
            "message/feedback-report" => {
                let (fields, _) = header_fields(content);
                let feedback_type = field(&fields, "feedback-type")
                    .ok_or(ArfError::MissingField("Feedback-Type"))?
                    .to_ascii_lowercase();
                field(&fields, "version").ok_or(ArfError::MissingField("Version"))?;
                complaint = Some(Complaint {
                    feedback_type,
                    user_agent: field(&fields, "user-agent").unwrap_or("").to_string(),
                    original_rcpt_to: field(&fields, "original-rcpt-to").and_then(address),
                    source_ip: field(&fields, "source-ip").map(str::to_string),
                    ..Complaint::default()
                });
            }
            "message/rfc822" | "text/rfc822-headers" => {
                original = Some(header_fields(content).0);
            }
            _ => {}
        }
    }
    let mut complaint = complaint.ok_or(ArfError::NoFeedbackPart)?;
    if let Some(original) = original {
        complaint.original_to = field(&original, "to").and_then(address);
        complaint.original_message_id = field(&original, "message-id").map(str::to_string);
        complaint.original_list_unsubscribe =
            field(&original, "list-unsubscribe").map(str::to_string);
    }
    Ok(complaint)
}

/// The unsubscribe tokens in a `List-Unsubscribe` value: the last path segment of each `<https:...>`
/// URL (without a query), for `unsubscribe::verify` to try.
pub fn tokens_in_list_unsubscribe(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|u| {
            let u = u.trim().trim_start_matches('<').trim_end_matches('>');
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return None;
            }
            let path = u.split(['?', '#']).next()?;
            path.rsplit('/').find(|s| !s.is_empty()).map(str::to_string)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5965 appendix B.1's example, with the original's List-Unsubscribe added.
    pub const REPORT: &str = "From: <abusedesk@example.com>\r\n\
Date: Thu, 8 Mar 2005 17:40:36 EDT\r\n\
Subject: FW: Earn money\r\n\
To: <abuse@example.net>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n\
\x20    boundary=\"part1_13d.2e68ed54_boundary\"\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
This is an email abuse report for an email message received from IP\r\n\
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <somespammer@example.net>\r\n\
Original-Rcpt-To: <User@example.com>\r\n\
Source-IP: 192.0.2.1\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: inline\r\n\
\r\n\
From: <somespammer@example.net>\r\n\
To: Some One <user@example.com>\r\n\
Subject: Earn money\r\n\
List-Unsubscribe: <mailto:u@example.net>,\r\n\
\t<https://unsub.example.net/u/TOKEN123?x=1>\r\n\
Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.net>\r\n\
\r\n\
Spam Spam Spam\r\n\
--part1_13d.2e68ed54_boundary--\r\n";

    #[test]
    fn the_rfc_example_gives_the_recipient_and_the_original() {
        let c = parse(REPORT.as_bytes()).unwrap();
        assert_eq!(c.feedback_type, "abuse");
        assert_eq!(c.user_agent, "SomeGenerator/1.0");
        assert_eq!(c.original_rcpt_to.as_deref(), Some("user@example.com"));
        assert_eq!(c.original_to.as_deref(), Some("user@example.com"));
        assert_eq!(c.source_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(
            c.original_message_id.as_deref(),
            Some("<8787KJKJ3K4J3K4J3K4J3.mail@example.net>")
        );
        let lu = c.original_list_unsubscribe.unwrap();
        assert_eq!(tokens_in_list_unsubscribe(&lu), vec!["TOKEN123"]);
    }

    #[test]
    fn malformed_reports_say_what_is_wrong() {
        assert_eq!(
            parse(b"Content-Type: text/plain\r\n\r\nhi\r\n"),
            Err(ArfError::NotAFeedbackReport)
        );
        assert_eq!(
            parse(b"Content-Type: multipart/report; report-type=feedback-report\r\n\r\nx"),
            Err(ArfError::NoBoundary)
        );
        let no_part = REPORT.replace("message/feedback-report", "text/plain");
        assert_eq!(parse(no_part.as_bytes()), Err(ArfError::NoFeedbackPart));
        let no_type = REPORT.replace("Feedback-Type: abuse\r\n", "");
        assert_eq!(
            parse(no_type.as_bytes()),
            Err(ArfError::MissingField("Feedback-Type"))
        );
        assert_eq!(
            parse(&vec![b'a'; REPORT_BYTES_MAX + 1]),
            Err(ArfError::TooLarge)
        );
        // LF-only line ends, as some reports arrive.
        assert!(parse(REPORT.replace("\r\n", "\n").as_bytes()).is_ok());
    }
}
