//! Reply classification: an SMTP reply (code, enhanced status, text) to one of the PowerMTA-style
//! bounce categories the accounting log and the API report. The full table, with where each rule
//! comes from, is in `docs/bounce-categories.md`; keep the two in step.

use std::fmt;

/// Why a recipient was not delivered, coarse enough to act on (suppress, fix setup, wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BounceCategory {
    BadMailbox,
    BadDomain,
    InactiveMailbox,
    QuotaIssues,
    NoAnswerFromHost,
    BadConnection,
    RoutingErrors,
    PolicyRelated,
    SpamRelated,
    ContentRelated,
    MessageExpired,
    ProtocolErrors,
    Other,
}

impl BounceCategory {
    /// Every category, in the order of the documentation.
    pub const ALL: [BounceCategory; 13] = [
        BounceCategory::BadMailbox,
        BounceCategory::BadDomain,
        BounceCategory::InactiveMailbox,
        BounceCategory::QuotaIssues,
        BounceCategory::NoAnswerFromHost,
        BounceCategory::BadConnection,
        BounceCategory::RoutingErrors,
        BounceCategory::PolicyRelated,
        BounceCategory::SpamRelated,
        BounceCategory::ContentRelated,
        BounceCategory::MessageExpired,
        BounceCategory::ProtocolErrors,
        BounceCategory::Other,
    ];

    /// The kebab-case name used in logs, the API and the `X-Volley-Bounce-Category` DSN field.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceCategory::BadMailbox => "bad-mailbox",
            BounceCategory::BadDomain => "bad-domain",
            BounceCategory::InactiveMailbox => "inactive-mailbox",
            BounceCategory::QuotaIssues => "quota-issues",
            BounceCategory::NoAnswerFromHost => "no-answer-from-host",
            BounceCategory::BadConnection => "bad-connection",
            BounceCategory::RoutingErrors => "routing-errors",
            BounceCategory::PolicyRelated => "policy-related",
            BounceCategory::SpamRelated => "spam-related",
            BounceCategory::ContentRelated => "content-related",
            BounceCategory::MessageExpired => "message-expired",
            BounceCategory::ProtocolErrors => "protocol-errors",
            BounceCategory::Other => "other",
        }
    }

    /// The category named `name` (as `as_str` writes it).
    pub fn from_name(name: &str) -> Option<BounceCategory> {
        BounceCategory::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for BounceCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use BounceCategory::*;

/// Wording that marks a reputation or content-filter block; it turns x.7.x (and bare 550/554) from
/// policy-related into spam-related.
const SPAM_WORDS: &[&str] = &[
    "spam",
    "blacklist",
    "blocklist",
    "block list",
    "black list",
    "blocked",
    "spamhaus",
    "spamcop",
    "barracuda",
    "rbl",
    "dnsbl",
    "junk",
    "unsolicited",
    "bulk mail",
    "reputation",
];

/// Text rules, tried in order after the enhanced code; the first pattern found wins. Matching is on
/// the ASCII-lower-cased reply text, by substring starting a word.
const TEXT_RULES: &[(&str, BounceCategory)] = &[
    // Throttling first: "too many connections ... try later" must not fall to bad-connection.
    ("rate limit", PolicyRelated),
    ("ratelimit", PolicyRelated),
    ("rate-limit", PolicyRelated),
    ("too many connections", PolicyRelated),
    ("too many concurrent", PolicyRelated),
    ("too many messages", PolicyRelated),
    ("throttl", PolicyRelated),
    ("sending rate", PolicyRelated),
    // Expiry is our own wording (and some relays').
    ("message expired", MessageExpired),
    ("delivery time expired", MessageExpired),
    ("queue time expired", MessageExpired),
    // Quota before mailbox: "mailbox full" also names the mailbox.
    ("over quota", QuotaIssues),
    ("overquota", QuotaIssues),
    ("quota exceeded", QuotaIssues),
    ("exceeded storage", QuotaIssues),
    ("insufficient storage", QuotaIssues),
    ("mailbox full", QuotaIssues),
    ("mailbox is full", QuotaIssues),
    ("mailfolder is full", QuotaIssues),
    ("quota", QuotaIssues),
    // Inactive before unknown: "account disabled" is not "unknown".
    ("account disabled", InactiveMailbox),
    ("account is disabled", InactiveMailbox),
    ("account has been disabled", InactiveMailbox),
    ("mailbox disabled", InactiveMailbox),
    ("mailbox is disabled", InactiveMailbox),
    ("inactive", InactiveMailbox),
    ("deactivated", InactiveMailbox),
    ("account expired", InactiveMailbox),
    ("no longer active", InactiveMailbox),
    ("suspended", InactiveMailbox),
    // Domain before mailbox: "domain does not exist" must not read as a missing user.
    ("domain not found", BadDomain),
    ("domain does not exist", BadDomain),
    ("domain doesn't exist", BadDomain),
    ("unknown domain", BadDomain),
    ("no such domain", BadDomain),
    ("unrouteable domain", BadDomain),
    ("host not found", BadDomain),
    ("host unknown", BadDomain),
    ("nxdomain", BadDomain),
    ("no mx", BadDomain),
    ("null mx", BadDomain),
    // Spam wording before the generic mailbox phrases: "550 mailbox unavailable, blocked by ..." is
    // a block, not a missing user.
    ("spam", SpamRelated),
    ("blacklist", SpamRelated),
    ("blocklist", SpamRelated),
    ("block list", SpamRelated),
    ("black list", SpamRelated),
    ("blocked", SpamRelated),
    ("spamhaus", SpamRelated),
    ("spamcop", SpamRelated),
    ("rbl", SpamRelated),
    ("junk", SpamRelated),
    ("unsolicited", SpamRelated),
    ("reputation", SpamRelated),
    ("user unknown", BadMailbox),
    ("unknown user", BadMailbox),
    ("no such user", BadMailbox),
    ("no such mailbox", BadMailbox),
    ("no such recipient", BadMailbox),
    ("unknown recipient", BadMailbox),
    ("invalid recipient", BadMailbox),
    ("recipient unknown", BadMailbox),
    ("recipient not found", BadMailbox),
    ("user not found", BadMailbox),
    ("mailbox not found", BadMailbox),
    ("address rejected", BadMailbox),
    ("mailbox unavailable", BadMailbox),
    ("does not exist", BadMailbox),
    ("doesn't exist", BadMailbox),
    ("not a valid mailbox", BadMailbox),
    ("unrouteable address", BadMailbox),
    ("virus", ContentRelated),
    ("malware", ContentRelated),
    ("message content", ContentRelated),
    ("content rejected", ContentRelated),
    ("attachment", ContentRelated),
    ("message too large", ContentRelated),
    ("message size exceeds", ContentRelated),
    ("size limit", ContentRelated),
    ("policy", PolicyRelated),
    ("not authorized", PolicyRelated),
    ("dmarc", PolicyRelated),
    ("spf", PolicyRelated),
    ("dkim", PolicyRelated),
    ("reverse dns", PolicyRelated),
    ("relay access denied", RoutingErrors),
    ("relaying denied", RoutingErrors),
    ("relay not permitted", RoutingErrors),
    ("mail loop", RoutingErrors),
    ("loops back", RoutingErrors),
    ("no route", RoutingErrors),
    ("timed out", NoAnswerFromHost),
    ("timeout", NoAnswerFromHost),
    ("no answer", NoAnswerFromHost),
    ("connection refused", BadConnection),
    ("connection reset", BadConnection),
    ("connection closed", BadConnection),
    ("lost connection", BadConnection),
    ("broken pipe", BadConnection),
    ("tls", BadConnection),
    ("syntax error", ProtocolErrors),
    ("command unrecognized", ProtocolErrors),
    ("command not recognized", ProtocolErrors),
    ("bad sequence", ProtocolErrors),
];

/// Classifies a failed SMTP reply.
///
/// Order: the enhanced status code (RFC 3463) when its subject and detail name a cause; then the
/// text rules; then the basic reply code (RFC 5321); else `Other`. For x.7.x the text still decides
/// between spam-related and policy-related. `text` is the reply text without the codes (or with
/// them; digits never match a rule).
pub fn classify(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> BounceCategory {
    let lower = text.to_ascii_lowercase();
    if let Some(category) = enhanced.and_then(|e| by_enhanced_code(e, &lower)) {
        return category;
    }
    if let Some(&(_, category)) = TEXT_RULES
        .iter()
        .find(|(p, _)| contains_word_start(&lower, p))
    {
        return category;
    }
    by_basic_code(code)
}

fn has_spam_wording(lower: &str) -> bool {
    SPAM_WORDS.iter().any(|w| contains_word_start(lower, w))
}

/// Whether `pattern` occurs in `haystack` at the start of a word (not after a letter or digit), so
/// "rbl" does not match "garbled". The end is left open: "throttl" matches "throttled".
fn contains_word_start(haystack: &str, pattern: &str) -> bool {
    haystack.match_indices(pattern).any(|(at, _)| {
        haystack
            .get(..at)
            .and_then(|before| before.chars().next_back())
            .is_none_or(|c| !c.is_alphanumeric())
    })
}

/// The category an enhanced status code names on its own; `None` for the "other" details
/// (x.0.0, x.1.0, ...) that say too little, which fall to the text.
fn by_enhanced_code(
    (class, subject, detail): (u8, u16, u16),
    lower: &str,
) -> Option<BounceCategory> {
    if class != 4 && class != 5 {
        return None;
    }
    match (subject, detail) {
        (1, 1 | 3 | 4) => Some(BadMailbox),
        (1, 2 | 10) => Some(BadDomain),
        (1, 6) => Some(InactiveMailbox),
        (2, 1) => Some(InactiveMailbox),
        (2, 2) | (3, 1) => Some(QuotaIssues),
        (2, 3) | (3, 4) => Some(ContentRelated),
        (4, 1) => Some(NoAnswerFromHost),
        (4, 2) => Some(BadConnection),
        (4, 3 | 4 | 6) => Some(RoutingErrors),
        (4, 5) => Some(PolicyRelated),
        (4, 7) => Some(MessageExpired),
        (5, _) => Some(ProtocolErrors),
        (6, _) => Some(ContentRelated),
        (7, _) if has_spam_wording(lower) => Some(SpamRelated),
        (7, _) => Some(PolicyRelated),
        _ => None,
    }
}

/// The fallback from the three-digit reply code alone (RFC 5321 section 4.2.3).
fn by_basic_code(code: u16) -> BounceCategory {
    match code {
        421 => BadConnection,
        452 | 552 => QuotaIssues,
        500..=504 => ProtocolErrors,
        551 => RoutingErrors,
        553 => BadMailbox,
        _ => Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (reply code, enhanced code, text, expected category)
    type EnhancedCase = (u16, (u8, u16, u16), &'static str, BounceCategory);

    #[test]
    fn names_round_trip_and_are_kebab_case() {
        for category in BounceCategory::ALL {
            let name = category.as_str();
            assert_eq!(BounceCategory::from_name(name), Some(category));
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
        assert_eq!(BounceCategory::from_name("nope"), None);
        assert_eq!(SpamRelated.to_string(), "spam-related");
    }

    #[test]
    fn enhanced_codes_decide_first() {
        let cases: &[EnhancedCase] = &[
            (
                550,
                (5, 1, 1),
                "The email account that you tried to reach does not exist",
                BadMailbox,
            ),
            (550, (5, 1, 1), "mailbox full", BadMailbox),
            (553, (5, 1, 3), "bad address syntax", BadMailbox),
            (550, (5, 1, 2), "bad destination system", BadDomain),
            (556, (5, 1, 10), "Recipient address has null MX", BadDomain),
            (
                550,
                (5, 2, 1),
                "The email account that you tried to reach is disabled",
                InactiveMailbox,
            ),
            (
                452,
                (4, 2, 2),
                "The email account that you tried to reach is over quota",
                QuotaIssues,
            ),
            (552, (5, 2, 2), "Mailbox full", QuotaIssues),
            (
                552,
                (5, 3, 4),
                "Message size exceeds fixed limit",
                ContentRelated,
            ),
            (451, (4, 4, 1), "no answer from host", NoAnswerFromHost),
            (421, (4, 4, 2), "connection dropped", BadConnection),
            (550, (5, 4, 4), "Unable to route", RoutingErrors),
            (554, (5, 4, 6), "routing loop detected", RoutingErrors),
            (451, (4, 4, 7), "delivery time expired", MessageExpired),
            (554, (5, 4, 7), "anything", MessageExpired),
            (501, (5, 5, 4), "Invalid command arguments", ProtocolErrors),
            (554, (5, 6, 0), "Message rejected", ContentRelated),
            (550, (5, 7, 1), "Relaying denied by policy", PolicyRelated),
            (
                550,
                (5, 7, 1),
                "Message rejected as spam by Content Filtering",
                SpamRelated,
            ),
            (
                554,
                (5, 7, 1),
                "Service unavailable; Client host blocked using Spamhaus",
                SpamRelated,
            ),
            (
                550,
                (5, 7, 26),
                "Unauthenticated email is not accepted from this domain (DMARC)",
                PolicyRelated,
            ),
            (
                421,
                (4, 7, 0),
                "IP not in whitelist for RCPT domain, closing connection",
                PolicyRelated,
            ),
            (
                421,
                (4, 7, 28),
                "Our system has detected an unusual rate of unsolicited mail",
                SpamRelated,
            ),
        ];
        for &(code, enhanced, text, expected) in cases {
            assert_eq!(
                classify(code, Some(enhanced), text),
                expected,
                "{code} {enhanced:?} {text}"
            );
        }
    }

    #[test]
    fn vague_enhanced_codes_fall_to_the_text() {
        let cases: &[EnhancedCase] = &[
            (550, (5, 0, 0), "User unknown", BadMailbox),
            (
                550,
                (5, 1, 0),
                "Sender address rejected: Domain not found",
                BadDomain,
            ),
            (550, (5, 0, 0), "mailbox unavailable", BadMailbox),
            (
                451,
                (4, 3, 0),
                "Mail server temporarily rejected message: rate limited",
                PolicyRelated,
            ),
            (550, (5, 0, 0), "nothing useful", Other),
            (250, (2, 0, 0), "ok", Other),
        ];
        for &(code, enhanced, text, expected) in cases {
            assert_eq!(
                classify(code, Some(enhanced), text),
                expected,
                "{code} {enhanced:?} {text}"
            );
        }
    }

    #[test]
    fn text_patterns_of_big_providers() {
        let cases: &[(u16, &str, BounceCategory)] = &[
            (
                550,
                "Requested action not taken: mailbox unavailable",
                BadMailbox,
            ),
            (550, "No such user here", BadMailbox),
            (
                550,
                "Recipient address rejected: User unknown in virtual mailbox table",
                BadMailbox,
            ),
            (
                550,
                "Requested action not taken: mailbox unavailable (blocked by Spamhaus)",
                SpamRelated,
            ),
            (
                554,
                "Message rejected: listed on our BLOCKLIST",
                SpamRelated,
            ),
            (550, "Your IP is on a blacklist", SpamRelated),
            (
                552,
                "Requested mail action aborted: exceeded storage allocation",
                QuotaIssues,
            ),
            (452, "User is over quota", QuotaIssues),
            (550, "Mailbox is full", QuotaIssues),
            (421, "Too many connections from your IP", PolicyRelated),
            (450, "Rate limit exceeded, try again later", PolicyRelated),
            (
                550,
                "This account has been disabled or discontinued",
                InactiveMailbox,
            ),
            (550, "Host unknown", BadDomain),
            (554, "Relay access denied", RoutingErrors),
            (421, "Connection timed out", NoAnswerFromHost),
            (421, "connection refused by 192.0.2.1", BadConnection),
            (554, "Message contains a virus", ContentRelated),
            (500, "Syntax error, command unrecognized", ProtocolErrors),
            (451, "Message expired after 5 days in queue", MessageExpired),
        ];
        for &(code, text, expected) in cases {
            assert_eq!(classify(code, None, text), expected, "{code} {text}");
        }
    }

    #[test]
    fn basic_code_is_the_last_resort() {
        assert_eq!(classify(421, None, ""), BadConnection);
        assert_eq!(classify(552, None, ""), QuotaIssues);
        assert_eq!(classify(503, None, ""), ProtocolErrors);
        assert_eq!(classify(553, None, ""), BadMailbox);
        assert_eq!(classify(551, None, ""), RoutingErrors);
        assert_eq!(classify(554, None, "Transaction failed"), Other);
        assert_eq!(classify(0, None, ""), Other);
    }

    #[test]
    fn patterns_start_at_a_word() {
        assert_eq!(classify(554, None, "garbled transmission"), Other);
        assert_eq!(classify(554, None, "listed in an RBL"), SpamRelated);
        assert_eq!(
            classify(550, None, "rejected by anti-spam filter"),
            SpamRelated
        );
    }

    #[test]
    fn matching_ignores_case_and_survives_any_text() {
        assert_eq!(classify(550, None, "USER UNKNOWN"), BadMailbox);
        assert_eq!(classify(550, None, "ÜSER ÜNKNÖWN \u{0}\r\n"), Other);
    }
}
