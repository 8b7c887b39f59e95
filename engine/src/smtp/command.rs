//! The SMTP command parser: one command line (without its CRLF) in, a typed `Command` out.
//! Pure and stateless: sequencing, limits and policy belong to `server`.
//!
//! Grammar: RFC 5321 section 4.1, with the MAIL/RCPT parameters of SIZE (RFC 1870), 8BITMIME
//! (RFC 6152), BINARYMIME/CHUNKING (RFC 3030), SMTPUTF8 (RFC 6531), DSN (RFC 3461) and AUTH
//! (RFC 4954).

use crate::envelope::{BodyType, DsnNotify, DsnRet};
use crate::smtp::reply::Reply;

/// The longest reverse or forward path accepted, in octets (RFC 5321 section 4.5.3.1.3).
pub const MAX_PATH_BYTES: usize = 256;
/// The longest ENVID accepted, in octets after xtext decoding (RFC 3461 section 4.4).
pub const MAX_ENVID_BYTES: usize = 100;
/// The longest ORCPT accepted, in octets after xtext decoding (RFC 3461 section 4.2).
pub const MAX_ORCPT_BYTES: usize = 500;

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo {
        domain: String,
    },
    Helo {
        domain: String,
    },
    Mail {
        /// Without angle brackets or source route; empty for the null sender `<>`.
        reverse_path: String,
        params: MailParams,
    },
    Rcpt {
        /// Without angle brackets or source route.
        forward_path: String,
        params: RcptParams,
    },
    Data,
    /// RFC 3030 `BDAT <chunk_bytes> [LAST]`.
    Bdat {
        chunk_bytes: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: AuthMechanism,
        /// The base64 initial response as sent (`=` stands for an empty one), if any.
        initial_response: Option<String>,
    },
}

/// The SASL mechanisms offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    Login,
}

/// MAIL FROM parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE=n, the declared message size in octets (saturating for absurd values).
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    /// RFC 8689 REQUIRETLS.
    pub requiretls: bool,
    pub ret: Option<DsnRet>,
    /// ENVID, xtext-decoded.
    pub envid: Option<String>,
}

impl MailParams {
    /// Whether any ESMTP parameter was given (a HELO session may use none).
    pub fn any(&self) -> bool {
        self.size.is_some()
            || self.body.is_some()
            || self.smtputf8
            || self.requiretls
            || self.ret.is_some()
            || self.envid.is_some()
    }
}

/// RCPT TO parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<DsnNotify>,
    /// ORCPT as `addr-type;address`, the address xtext-decoded.
    pub orcpt: Option<String>,
}

impl RcptParams {
    /// Whether any ESMTP parameter was given.
    pub fn any(&self) -> bool {
        self.notify.is_some() || self.orcpt.is_some()
    }
}

/// Why a command line was refused; each maps to one precise reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command")]
    Unknown,
    #[error("command not implemented")]
    NotImplemented,
    #[error("syntax error in arguments")]
    Syntax,
    #[error("arguments given to a command that takes none")]
    NoArgumentsAllowed,
    #[error("malformed reverse path")]
    BadSenderAddress,
    #[error("malformed forward path")]
    BadRecipientAddress,
    #[error("unknown or malformed MAIL/RCPT parameter")]
    BadParameter,
    #[error("unsupported AUTH mechanism")]
    UnsupportedMechanism,
}

impl CommandError {
    /// The reply this error earns.
    pub fn reply(self) -> Reply {
        match self {
            CommandError::Unknown => Reply::UNKNOWN_COMMAND,
            CommandError::NotImplemented => Reply::NOT_IMPLEMENTED,
            CommandError::Syntax => Reply::SYNTAX_ERROR,
            CommandError::NoArgumentsAllowed => Reply::NO_ARGUMENTS_ALLOWED,
            CommandError::BadSenderAddress => Reply::BAD_SENDER_ADDRESS,
            CommandError::BadRecipientAddress => Reply::BAD_RECIPIENT_ADDRESS,
            CommandError::BadParameter => Reply::UNKNOWN_PARAMETER,
            CommandError::UnsupportedMechanism => Reply::AUTH_UNSUPPORTED_MECHANISM,
        }
    }
}

/// Parses one command line. `line` excludes the CRLF (a trailing CRLF is tolerated and ignored).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let verb_end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
    let (verb, rest) = line.split_at(verb_end);
    if verb.len() > 8 || verb.is_empty() {
        return Err(CommandError::Unknown);
    }
    let mut upper = [0u8; 8];
    for (dst, src) in upper.iter_mut().zip(verb) {
        *dst = src.to_ascii_uppercase();
    }
    let verb = &upper[..verb.len()];
    // Arguments: after exactly the separating space; control characters never belong in a command.
    let args = rest.strip_prefix(b" ").unwrap_or(rest);
    if args.iter().any(|b| *b < 0x20 || *b == 0x7f) {
        return match verb {
            b"EHLO" | b"HELO" | b"MAIL" | b"RCPT" | b"DATA" | b"BDAT" | b"RSET" | b"NOOP"
            | b"QUIT" | b"VRFY" | b"EXPN" | b"HELP" | b"STARTTLS" | b"AUTH" => {
                Err(CommandError::Syntax)
            }
            _ => Err(CommandError::Unknown),
        };
    }
    let args = std::str::from_utf8(args).map_err(|_| CommandError::Syntax)?;
    let args = args.trim_end_matches(' ');
    match verb {
        b"EHLO" => Ok(Command::Ehlo {
            domain: parse_helo_domain(args)?,
        }),
        b"HELO" => Ok(Command::Helo {
            domain: parse_helo_domain(args)?,
        }),
        b"MAIL" => parse_mail(args),
        b"RCPT" => parse_rcpt(args),
        b"DATA" => no_arguments(args, Command::Data),
        b"BDAT" => parse_bdat(args),
        b"RSET" => no_arguments(args, Command::Rset),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_arguments(args, Command::Quit),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" => Err(CommandError::NotImplemented),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_arguments(args, Command::StartTls),
        b"AUTH" => parse_auth(args),
        _ => Err(CommandError::Unknown),
    }
}

fn no_arguments(args: &str, command: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(CommandError::NoArgumentsAllowed)
    }
}

/// The EHLO/HELO argument: one domain or address literal. Extra words are tolerated (some clients
/// send them); an empty argument is not.
fn parse_helo_domain(args: &str) -> Result<String, CommandError> {
    let domain = args.split(' ').next().unwrap_or("");
    if domain.is_empty() || domain.len() > 255 {
        return Err(CommandError::Syntax);
    }
    let valid = if let Some(literal) = domain.strip_prefix('[') {
        literal.ends_with(']') && literal.len() > 1
    } else {
        domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || !c.is_ascii())
    };
    if valid {
        Ok(domain.to_string())
    } else {
        Err(CommandError::Syntax)
    }
}

/// Splits `FROM:<path> params` (after `keyword`), tolerating a space after the colon.
fn split_path<'a>(args: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args.get(keyword.len()..)?.trim_start_matches(' ');
    let inner = rest.strip_prefix('<')?;
    // Find the closing '>' outside a quoted local part.
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == '>' && !in_quotes {
            let path = &inner[..i];
            let after = &inner[i + 1..];
            if !after.is_empty() && !after.starts_with(' ') {
                return None;
            }
            return Some((path, after.trim_start_matches(' ')));
        }
    }
    None
}

/// Validates a path's content (between the angle brackets) and returns the mailbox without a
/// source route. `Ok(None)` is the null path `<>`.
fn parse_mailbox(path: &str) -> Option<Option<String>> {
    if path.is_empty() {
        return Some(None);
    }
    if path.len() > MAX_PATH_BYTES {
        return None;
    }
    // An obsolete source route `@a,@b:user@c` is ignored (RFC 5321 section 4.1.2 and appendix C).
    let mailbox = if path.starts_with('@') {
        path.split_once(':')?.1
    } else {
        path
    };
    if mailbox.eq_ignore_ascii_case("postmaster") {
        return Some(Some(mailbox.to_string()));
    }
    let (local, domain) = mailbox.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let local_ok = if local.len() >= 2 && local.starts_with('"') && local.ends_with('"') {
        local.chars().all(|c| c != '\r' && c != '\n')
    } else {
        local.chars().all(|c| {
            !c.is_ascii()
                || (c.is_ascii_graphic()
                    && !matches!(
                        c,
                        '<' | '>' | '"' | '(' | ')' | ',' | ':' | ';' | '[' | ']' | '\\' | '@'
                    ))
        })
    };
    let domain_ok = if let Some(literal) = domain.strip_prefix('[') {
        literal.strip_suffix(']').is_some_and(|inside| {
            !inside.is_empty()
                && inside
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '\\'))
        })
    } else {
        domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || !c.is_ascii())
            && !domain.starts_with('.')
            && !domain.contains("..")
    };
    (local_ok && domain_ok).then(|| Some(mailbox.to_string()))
}

/// Iterates `KEYWORD[=value]` parameters separated by spaces.
fn parameters(params: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    params
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
}

fn parse_mail(args: &str) -> Result<Command, CommandError> {
    let (path, params_text) = split_path(args, "FROM:").ok_or(CommandError::BadSenderAddress)?;
    let reverse_path = parse_mailbox(path)
        .ok_or(CommandError::BadSenderAddress)?
        .unwrap_or_default();
    let mut params = MailParams::default();
    let mut seen_auth = false;
    for (keyword, value) in parameters(params_text) {
        if keyword.eq_ignore_ascii_case("SIZE") {
            let value = value.ok_or(CommandError::BadParameter)?;
            if params.size.is_some() || value.is_empty() || value.len() > 20 {
                return Err(CommandError::BadParameter);
            }
            let mut size: u64 = 0;
            for b in value.bytes() {
                if !b.is_ascii_digit() {
                    return Err(CommandError::BadParameter);
                }
                size = size.saturating_mul(10).saturating_add(u64::from(b - b'0'));
            }
            params.size = Some(size);
        } else if keyword.eq_ignore_ascii_case("BODY") {
            let value = value.ok_or(CommandError::BadParameter)?;
            let body = if value.eq_ignore_ascii_case("7BIT") {
                BodyType::SevenBit
            } else if value.eq_ignore_ascii_case("8BITMIME") {
                BodyType::EightBitMime
            } else if value.eq_ignore_ascii_case("BINARYMIME") {
                BodyType::BinaryMime
            } else {
                return Err(CommandError::BadParameter);
            };
            if params.body.replace(body).is_some() {
                return Err(CommandError::BadParameter);
            }
        } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
            if value.is_some() || params.smtputf8 {
                return Err(CommandError::BadParameter);
            }
            params.smtputf8 = true;
        } else if keyword.eq_ignore_ascii_case("REQUIRETLS") {
            if value.is_some() || params.requiretls {
                return Err(CommandError::BadParameter);
            }
            params.requiretls = true;
        } else if keyword.eq_ignore_ascii_case("RET") {
            let value = value.ok_or(CommandError::BadParameter)?;
            let ret = if value.eq_ignore_ascii_case("FULL") {
                DsnRet::Full
            } else if value.eq_ignore_ascii_case("HDRS") {
                DsnRet::Headers
            } else {
                return Err(CommandError::BadParameter);
            };
            if params.ret.replace(ret).is_some() {
                return Err(CommandError::BadParameter);
            }
        } else if keyword.eq_ignore_ascii_case("ENVID") {
            let value = value.ok_or(CommandError::BadParameter)?;
            let envid = decode_xtext(value).ok_or(CommandError::BadParameter)?;
            if envid.is_empty() || envid.len() > MAX_ENVID_BYTES || params.envid.is_some() {
                return Err(CommandError::BadParameter);
            }
            params.envid = Some(envid);
        } else if keyword.eq_ignore_ascii_case("AUTH") {
            // RFC 4954 section 5: the submitter identity; accepted and ignored.
            if value.is_none() || seen_auth {
                return Err(CommandError::BadParameter);
            }
            seen_auth = true;
        } else {
            return Err(CommandError::BadParameter);
        }
    }
    Ok(Command::Mail {
        reverse_path,
        params,
    })
}

fn parse_rcpt(args: &str) -> Result<Command, CommandError> {
    let (path, params_text) = split_path(args, "TO:").ok_or(CommandError::BadRecipientAddress)?;
    let forward_path = parse_mailbox(path)
        .flatten()
        .ok_or(CommandError::BadRecipientAddress)?;
    let mut params = RcptParams::default();
    for (keyword, value) in parameters(params_text) {
        if keyword.eq_ignore_ascii_case("NOTIFY") {
            let value = value.ok_or(CommandError::BadParameter)?;
            let notify = parse_notify(value).ok_or(CommandError::BadParameter)?;
            if params.notify.replace(notify).is_some() {
                return Err(CommandError::BadParameter);
            }
        } else if keyword.eq_ignore_ascii_case("ORCPT") {
            let value = value.ok_or(CommandError::BadParameter)?;
            let (addr_type, address) = value.split_once(';').ok_or(CommandError::BadParameter)?;
            let type_ok = !addr_type.is_empty()
                && addr_type
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let address = decode_xtext(address).ok_or(CommandError::BadParameter)?;
            if !type_ok
                || address.is_empty()
                || address.len() > MAX_ORCPT_BYTES
                || params.orcpt.is_some()
            {
                return Err(CommandError::BadParameter);
            }
            params.orcpt = Some(format!("{addr_type};{address}"));
        } else {
            return Err(CommandError::BadParameter);
        }
    }
    Ok(Command::Rcpt {
        forward_path,
        params,
    })
}

/// `NEVER` alone, or a comma list of `SUCCESS`, `FAILURE`, `DELAY` (RFC 3461 section 4.1).
fn parse_notify(value: &str) -> Option<DsnNotify> {
    let mut notify = DsnNotify {
        unspecified: false,
        ..DsnNotify::default()
    };
    for item in value.split(',') {
        if item.eq_ignore_ascii_case("NEVER") {
            notify.never = true;
        } else if item.eq_ignore_ascii_case("SUCCESS") {
            notify.success = true;
        } else if item.eq_ignore_ascii_case("FAILURE") {
            notify.failure = true;
        } else if item.eq_ignore_ascii_case("DELAY") {
            notify.delay = true;
        } else {
            return None;
        }
    }
    if notify.never && (notify.success || notify.failure || notify.delay) {
        return None;
    }
    Some(notify)
}

/// Decodes RFC 3461 xtext: printable ASCII except `+` and `=`, with `+XX` hex escapes. The result
/// must be UTF-8 (RFC 6533 allows UTF-8 in ORCPT).
pub fn decode_xtext(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            33..=126 => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// `BDAT <chunk-size> [LAST]`.
fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(CommandError::Syntax)?;
    if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax);
    }
    let chunk_bytes = size.parse::<u64>().map_err(|_| CommandError::Syntax)?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax);
    }
    Ok(Command::Bdat { chunk_bytes, last })
}

/// `AUTH <mechanism> [initial-response]` (RFC 4954 section 4).
fn parse_auth(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(CommandError::Syntax)?;
    let mechanism = if mechanism.eq_ignore_ascii_case("PLAIN") {
        AuthMechanism::Plain
    } else if mechanism.eq_ignore_ascii_case("LOGIN") {
        AuthMechanism::Login
    } else {
        return Err(CommandError::UnsupportedMechanism);
    };
    let initial_response = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax);
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(line: &str) -> (String, MailParams) {
        match parse(line.as_bytes()) {
            Ok(Command::Mail {
                reverse_path,
                params,
            }) => (reverse_path, params),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn rcpt(line: &str) -> (String, RcptParams) {
        match parse(line.as_bytes()) {
            Ok(Command::Rcpt {
                forward_path,
                params,
            }) => (forward_path, params),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn simple_commands_are_case_insensitive() {
        assert_eq!(parse(b"data"), Ok(Command::Data));
        assert_eq!(parse(b"DATA\r\n"), Ok(Command::Data));
        assert_eq!(parse(b"RsEt"), Ok(Command::Rset));
        assert_eq!(parse(b"NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse(b"VRFY user"), Ok(Command::Vrfy));
        assert_eq!(parse(b"HELP"), Ok(Command::Help));
        assert_eq!(parse(b"HELP MAIL"), Ok(Command::Help));
        assert_eq!(parse(b"STARTTLS"), Ok(Command::StartTls));
        assert_eq!(parse(b"EXPN list"), Err(CommandError::NotImplemented));
    }

    #[test]
    fn arguments_where_none_are_allowed() {
        assert_eq!(parse(b"DATA x"), Err(CommandError::NoArgumentsAllowed));
        assert_eq!(parse(b"RSET x"), Err(CommandError::NoArgumentsAllowed));
        assert_eq!(parse(b"STARTTLS x"), Err(CommandError::NoArgumentsAllowed));
        assert_eq!(parse(b"QUIT now"), Err(CommandError::NoArgumentsAllowed));
        assert_eq!(parse(b"DATA "), Ok(Command::Data));
    }

    #[test]
    fn unknown_and_malformed_verbs() {
        assert_eq!(parse(b""), Err(CommandError::Unknown));
        assert_eq!(parse(b" MAIL FROM:<>"), Err(CommandError::Unknown));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(CommandError::Unknown));
        assert_eq!(parse(b"MAILFROM:<a@b>"), Err(CommandError::Unknown));
        assert_eq!(parse(b"\xff\xfe"), Err(CommandError::Unknown));
        assert_eq!(parse(b"NOOP \x00"), Err(CommandError::Syntax));
        assert_eq!(parse(b"HELO a\rb"), Err(CommandError::Syntax));
        assert_eq!(parse(b"HELO \xff"), Err(CommandError::Syntax));
    }

    #[test]
    fn ehlo_and_helo() {
        assert_eq!(
            parse(b"EHLO client.example"),
            Ok(Command::Ehlo {
                domain: "client.example".into()
            })
        );
        assert_eq!(
            parse(b"helo [192.0.2.1]"),
            Ok(Command::Helo {
                domain: "[192.0.2.1]".into()
            })
        );
        assert_eq!(
            parse(b"EHLO host extra words"),
            Ok(Command::Ehlo {
                domain: "host".into()
            })
        );
        assert_eq!(parse(b"EHLO"), Err(CommandError::Syntax));
        assert_eq!(parse(b"EHLO "), Err(CommandError::Syntax));
        assert_eq!(parse(b"EHLO bad<host>"), Err(CommandError::Syntax));
    }

    #[test]
    fn mail_paths() {
        assert_eq!(mail("MAIL FROM:<a@b.example>").0, "a@b.example");
        assert_eq!(mail("mail from:<>").0, "");
        assert_eq!(mail("MAIL FROM: <a@b.example>").0, "a@b.example");
        assert_eq!(
            mail("MAIL FROM:<@relay.example:a@b.example>").0,
            "a@b.example"
        );
        assert_eq!(
            mail("MAIL FROM:<\"john doe\"@b.example>").0,
            "\"john doe\"@b.example"
        );
        assert_eq!(mail("MAIL FROM:<\"a>b\"@b.example>").0, "\"a>b\"@b.example");
        assert_eq!(mail("MAIL FROM:<a@[192.0.2.1]>").0, "a@[192.0.2.1]");
        assert_eq!(
            mail("MAIL FROM:<jürgen@bücher.example>").0,
            "jürgen@bücher.example"
        );
        for bad in [
            "MAIL FROM:a@b.example",
            "MAIL FROM:<a@b.example",
            "MAIL FROM:<a b@c.example>",
            "MAIL FROM:<a@>",
            "MAIL FROM:<@b.example>",
            "MAIL FROM:<ab.example>",
            "MAIL FROM:<a@b..example>",
            "MAIL FROM:<a@b.example>SIZE=1",
            "MAIL TO:<a@b.example>",
            "MAIL",
        ] {
            assert_eq!(
                parse(bad.as_bytes()),
                Err(CommandError::BadSenderAddress),
                "{bad}"
            );
        }
        let long = format!("MAIL FROM:<{}@b.example>", "a".repeat(300));
        assert_eq!(parse(long.as_bytes()), Err(CommandError::BadSenderAddress));
    }

    #[test]
    fn mail_parameters() {
        let (_, p) = mail(
            "MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<> \
             requiretls",
        );
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body: Some(BodyType::EightBitMime),
                smtputf8: true,
                requiretls: true,
                ret: Some(DsnRet::Headers),
                envid: Some("QQ+1".into()),
            }
        );
        assert!(p.any());
        assert!(!MailParams::default().any());
        assert_eq!(
            mail("MAIL FROM:<> body=binarymime").1.body,
            Some(BodyType::BinaryMime)
        );
        assert_eq!(
            mail("MAIL FROM:<> BODY=7BIT").1.body,
            Some(BodyType::SevenBit)
        );
        assert_eq!(mail("MAIL FROM:<> RET=FULL").1.ret, Some(DsnRet::Full));
        assert_eq!(
            mail("MAIL FROM:<> SIZE=99999999999999999999").1.size,
            Some(u64::MAX)
        );
        for bad in [
            "MAIL FROM:<> SIZE",
            "MAIL FROM:<> SIZE=",
            "MAIL FROM:<> SIZE=12a",
            "MAIL FROM:<> SIZE=1 SIZE=2",
            "MAIL FROM:<> BODY=9BIT",
            "MAIL FROM:<> SMTPUTF8=yes",
            "MAIL FROM:<> REQUIRETLS=yes",
            "MAIL FROM:<> REQUIRETLS REQUIRETLS",
            "MAIL FROM:<> RET=SOME",
            "MAIL FROM:<> ENVID=a=b",
            "MAIL FROM:<> ENVID=+4",
            "MAIL FROM:<> ENVID=+ZZ",
            "MAIL FROM:<> XFOO=1",
            "MAIL FROM:<> AUTH",
        ] {
            assert_eq!(
                parse(bad.as_bytes()),
                Err(CommandError::BadParameter),
                "{bad}"
            );
        }
    }

    #[test]
    fn rcpt_paths_and_parameters() {
        assert_eq!(rcpt("RCPT TO:<u@d.example>").0, "u@d.example");
        assert_eq!(rcpt("rcpt to:<Postmaster>").0, "Postmaster");
        assert_eq!(rcpt("RCPT TO: <u@d.example>").0, "u@d.example");
        let (_, p) =
            rcpt("RCPT TO:<u@d.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;u+2Bx@d.example");
        assert_eq!(
            p.notify,
            Some(DsnNotify {
                unspecified: false,
                never: false,
                success: true,
                failure: false,
                delay: true
            })
        );
        assert_eq!(p.orcpt.as_deref(), Some("rfc822;u+x@d.example"));
        let (_, p) = rcpt("RCPT TO:<u@d.example> NOTIFY=never");
        assert!(p.notify.unwrap().never);
        assert!(!p.notify.unwrap().wants_failure());
        assert!(!RcptParams::default().any());
        assert_eq!(parse(b"RCPT TO:<>"), Err(CommandError::BadRecipientAddress));
        assert_eq!(
            parse(b"RCPT TO:u@d"),
            Err(CommandError::BadRecipientAddress)
        );
        assert_eq!(
            parse(b"RCPT FROM:<u@d>"),
            Err(CommandError::BadRecipientAddress)
        );
        for bad in [
            "RCPT TO:<u@d> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<u@d> NOTIFY=SOMETIMES",
            "RCPT TO:<u@d> NOTIFY=",
            "RCPT TO:<u@d> ORCPT=u@d",
            "RCPT TO:<u@d> ORCPT=rfc822;",
            "RCPT TO:<u@d> ORCPT=rf c822;u@d",
            "RCPT TO:<u@d> SIZE=1",
            "RCPT TO:<u@d> NOTIFY=DELAY NOTIFY=DELAY",
        ] {
            assert_eq!(
                parse(bad.as_bytes()),
                Err(CommandError::BadParameter),
                "{bad}"
            );
        }
    }

    #[test]
    fn bdat() {
        assert_eq!(
            parse(b"BDAT 100"),
            Ok(Command::Bdat {
                chunk_bytes: 100,
                last: false
            })
        );
        assert_eq!(
            parse(b"bdat 0 last"),
            Ok(Command::Bdat {
                chunk_bytes: 0,
                last: true
            })
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 99999999999999999999",
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(CommandError::Syntax), "{bad}");
        }
    }

    #[test]
    fn auth() {
        assert_eq!(
            parse(b"AUTH PLAIN"),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Plain,
                initial_response: None
            })
        );
        assert_eq!(
            parse(b"auth login dXNlcg=="),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Login,
                initial_response: Some("dXNlcg==".into())
            })
        );
        assert_eq!(
            parse(b"AUTH CRAM-MD5"),
            Err(CommandError::UnsupportedMechanism)
        );
        assert_eq!(parse(b"AUTH"), Err(CommandError::Syntax));
        assert_eq!(parse(b"AUTH PLAIN a b"), Err(CommandError::Syntax));
    }

    #[test]
    fn xtext() {
        assert_eq!(decode_xtext("abc+2B+3Dx").as_deref(), Some("abc+=x"));
        assert_eq!(decode_xtext("").as_deref(), Some(""));
        assert_eq!(decode_xtext("a b"), None);
        assert_eq!(decode_xtext("+FF"), None); // not UTF-8
        assert_eq!(decode_xtext("+C3+BC").as_deref(), Some("ü"));
    }

    #[test]
    fn errors_map_to_precise_replies() {
        assert_eq!(CommandError::Unknown.reply().code(), 500);
        assert_eq!(
            CommandError::Syntax.reply().to_string(),
            Reply::SYNTAX_ERROR.to_string()
        );
        assert_eq!(CommandError::BadParameter.reply().code(), 555);
        assert_eq!(
            CommandError::BadParameter
                .reply()
                .enhanced()
                .unwrap()
                .to_string(),
            "5.5.4"
        );
        assert_eq!(
            CommandError::BadSenderAddress
                .reply()
                .enhanced()
                .unwrap()
                .to_string(),
            "5.1.7"
        );
        assert_eq!(
            CommandError::BadRecipientAddress
                .reply()
                .enhanced()
                .unwrap()
                .to_string(),
            "5.1.3"
        );
        assert_eq!(CommandError::UnsupportedMechanism.reply().code(), 504);
    }
}
