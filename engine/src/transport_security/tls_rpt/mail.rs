//! The report as mail (RFC 8460 section 5.3): `multipart/report; report-type=tlsrpt`, a short
//! text part and the gzip report as an `application/tlsrpt+gzip` attachment. Pure.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// What the message says about itself.
pub struct ReportMail<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// The policy domain the report is about.
    pub domain: &'a str,
    /// The reporting MTA's host name (`TLS-Report-Submitter`).
    pub submitter: &'a str,
    pub report_id: &'a str,
    /// RFC 5322 date.
    pub date: &'a str,
    /// Unix seconds of the period's start and end, for the file name.
    pub start_s: u64,
    pub end_s: u64,
}

/// The complete message with CRLF line endings.
pub fn build(mail: &ReportMail<'_>, gzip: &[u8]) -> Vec<u8> {
    // Only RFC 2046 boundary characters: the report id carries `@`.
    let safe: String = mail
        .report_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let boundary = format!("tlsrpt-{safe}");
    // RFC 8460 5.3: the unique id is letters and digits only.
    let unique: String = mail
        .report_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let file = format!(
        "{}!{}!{}!{}!{unique}.json.gz",
        mail.submitter, mail.domain, mail.start_s, mail.end_s
    );
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push_str("\r\n");
    };
    line(&format!("From: <{}>", mail.from));
    line(&format!("To: <{}>", mail.to));
    line(&format!(
        "Subject: Report Domain: {} Submitter: {} Report-ID: <{}>",
        mail.domain, mail.submitter, mail.report_id
    ));
    line(&format!("Date: {}", mail.date));
    if mail.report_id.contains('@') {
        line(&format!("Message-ID: <{}>", mail.report_id));
    } else {
        line(&format!(
            "Message-ID: <{}@{}>",
            mail.report_id, mail.submitter
        ));
    }
    line(&format!("TLS-Report-Domain: {}", mail.domain));
    line(&format!("TLS-Report-Submitter: {}", mail.submitter));
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\""
    ));
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=us-ascii");
    line("");
    line(&format!(
        "This is an aggregate TLS report (RFC 8460) from {} for {}.",
        mail.submitter, mail.domain
    ));
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: application/tlsrpt+gzip");
    line("Content-Transfer-Encoding: base64");
    line(&format!(
        "Content-Disposition: attachment; filename=\"{file}\""
    ));
    line("");
    let encoded = STANDARD.encode(gzip);
    for chunk in encoded.as_bytes().chunks(76) {
        line(&String::from_utf8_lossy(chunk));
    }
    line(&format!("--{boundary}--"));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_attachment() {
        let mail = ReportMail {
            from: "tlsrpt-noreply@mta.test",
            to: "tls@example.test",
            domain: "example.test",
            submitter: "mta.test",
            report_id: "r1@mta.test",
            date: "Thu, 01 Jan 1970 00:00:00 +0000",
            start_s: 0,
            end_s: 86_400,
        };
        let text = String::from_utf8(build(&mail, &[1, 2, 3])).unwrap();
        assert!(text.contains("TLS-Report-Domain: example.test\r\n"));
        assert!(text.contains("TLS-Report-Submitter: mta.test\r\n"));
        assert!(text.contains("multipart/report; report-type=\"tlsrpt\""));
        assert!(text.contains("Content-Type: application/tlsrpt+gzip\r\n"));
        assert!(text.contains(&format!("\r\n{}\r\n", STANDARD.encode([1, 2, 3]))));
        assert!(text.contains("Message-ID: <r1@mta.test>\r\n"));
        assert!(text.contains("filename=\"mta.test!example.test!0!86400!r1mtatest.json.gz\""));
        assert!(text.ends_with("--tlsrpt-r1_mta.test--\r\n"));
    }
}
