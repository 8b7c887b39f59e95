//! What a message says about itself besides the envelope: its Message-ID (read, left in place),
//! its campaign, and the pool or VMTA it asks to be sent from. The last two come from the
//! `X-Volley-Campaign`, `X-Volley-Pool` and `X-Volley-VMTA` fields, always taken off before the
//! message is spooled, or from the inject request's `campaign`, `pool` and `vmta`. Who may choose
//! a pool or VMTA is decided here too (`choose_route`). Pure: bytes and configuration in, values out.

use crate::config::Config;
use crate::envelope::RouteChoice;
use crate::rfc5322::split_message;

pub const CAMPAIGN_HEADER: &str = "X-Volley-Campaign";
pub const POOL_HEADER: &str = "X-Volley-Pool";
pub const VMTA_HEADER: &str = "X-Volley-VMTA";

/// Bytes of a Message-ID kept (without its angle brackets); a longer one is cut, on a character
/// boundary.
pub const MESSAGE_ID_BYTES_MAX: usize = 255;
/// Bytes of a campaign name kept; from a header a longer one is cut (on a character boundary),
/// the API refuses it.
pub const CAMPAIGN_BYTES_MAX: usize = 128;
/// Bytes of a pool or VMTA name read from a header; a longer name is cut, so it matches nothing
/// configured and is refused as unknown.
pub const ROUTE_NAME_BYTES_MAX: usize = 255;

/// A pool, VMTA or campaign a message asked for, with where it was asked (the header or the
/// inject field), for the reply that refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub field: &'static str,
}

/// What a message (or an inject request) asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    pub campaign: Option<String>,
    pub pool: Option<Named>,
    pub vmta: Option<Named>,
}

impl Requested {
    /// `self` where it says something, else `other` (inject fields over the content's headers).
    pub fn or(self, other: Requested) -> Requested {
        Requested {
            campaign: self.campaign.or(other.campaign),
            pool: self.pool.or(other.pool),
            vmta: self.vmta.or(other.vmta),
        }
    }
}

/// What the header section gave: the Message-ID and the requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub message_id: String,
    pub requested: Requested,
    /// A `TLS-Required: No` field (RFC 8689 5); the field stays in the message.
    pub tls_required_no: bool,
}

/// `raw` as one line of text: undecodable bytes replaced, control characters (CR, LF, tab, DEL...)
/// removed, white space trimmed, then cut to at most `max_bytes` on a character boundary.
pub fn sanitize(raw: &str, max_bytes: usize) -> String {
    let clean: String = raw.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim();
    let mut end = clean.len().min(max_bytes);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].trim_end().to_string()
}

/// A Message-ID field's value without its angle brackets, sanitized and bounded.
fn message_id_of(value: &[u8]) -> String {
    let text = sanitize(&String::from_utf8_lossy(value), usize::MAX);
    let bare = text.strip_prefix('<').unwrap_or(&text);
    let bare = bare.strip_suffix('>').unwrap_or(bare);
    sanitize(bare, MESSAGE_ID_BYTES_MAX)
}

/// The Message-ID of a header block (without brackets); empty when it has none.
pub fn message_id_in(header: &[u8]) -> String {
    crate::rfc5322::find_field(header, "Message-ID")
        .map(|f| message_id_of(f.value()))
        .unwrap_or_default()
}

/// RFC 8689 5: `TLS-Required: No` asks that the recipients' TLS policies be ignored.
pub const TLS_REQUIRED_HEADER: &str = "TLS-Required";

/// Reads the Message-ID and `TLS-Required`, and takes every `X-Volley-Campaign`, `X-Volley-Pool` and `X-Volley-VMTA`
/// field off the message (the first of each counts), in one pass over the header section. The
/// message is copied only when it had one of them.
pub fn take(message: Vec<u8>) -> (Found, Vec<u8>) {
    let mut found = Found::default();
    let mut remove = Vec::new();
    {
        let (fields, _) = split_message(&message);
        for field in &fields {
            let value = || String::from_utf8_lossy(field.value());
            if field.is("Message-ID") {
                if found.message_id.is_empty() {
                    found.message_id = message_id_of(field.value());
                }
                continue;
            }
            if field.is(TLS_REQUIRED_HEADER) {
                found.tls_required_no |= value().trim().eq_ignore_ascii_case("no");
                continue;
            }
            let requested = &mut found.requested;
            if field.is(CAMPAIGN_HEADER) {
                requested
                    .campaign
                    .get_or_insert_with(|| sanitize(&value(), CAMPAIGN_BYTES_MAX));
            } else if field.is(POOL_HEADER) {
                requested.pool.get_or_insert_with(|| Named {
                    name: sanitize(&value(), ROUTE_NAME_BYTES_MAX),
                    field: POOL_HEADER,
                });
            } else if field.is(VMTA_HEADER) {
                requested.vmta.get_or_insert_with(|| Named {
                    name: sanitize(&value(), ROUTE_NAME_BYTES_MAX),
                    field: VMTA_HEADER,
                });
            } else {
                continue;
            }
            remove.push(field.range());
        }
    }
    if remove.is_empty() {
        return (found, message);
    }
    let removed: usize = remove.iter().map(|r| r.len()).sum();
    let mut rest = Vec::with_capacity(message.len() - removed);
    let mut at = 0;
    for range in remove {
        rest.extend_from_slice(&message[at..range.start]);
        at = range.end;
    }
    rest.extend_from_slice(&message[at..]);
    (found, rest)
}

/// Who asks for a pool or VMTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker<'a> {
    /// An AUTH client: only its own pool (`Config::pool_for`) or a VMTA of it.
    Customer(&'a str),
    /// A relay network or the API: any pool or VMTA.
    Trusted,
    /// Anyone else: nothing.
    Untrusted,
}

/// Why a message's choice of pool or VMTA was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteRefusal {
    #[error("{pool} and {vmta} both given: name one")]
    Both {
        pool: &'static str,
        vmta: &'static str,
    },
    #[error("{field}: no {what} {name:?}")]
    Unknown {
        field: &'static str,
        what: &'static str,
        name: String,
    },
    #[error("{field}: {what} {name:?} is not in the pool of customer {customer}")]
    Foreign {
        field: &'static str,
        what: &'static str,
        name: String,
        customer: String,
    },
    #[error("{field} is only taken from relay networks and AUTH customers")]
    Untrusted { field: &'static str },
}

/// The route a message gets for what it asked: `None` when it asked for none. Both a pool and a
/// VMTA: refused (neither is guessed to win). An AUTH customer may name only its own pool or a
/// VMTA of it (whether another name exists is not told); trusted clients any configured one.
pub fn choose_route(
    config: &Config,
    requested: &Requested,
    asker: Asker<'_>,
) -> Result<Option<RouteChoice>, RouteRefusal> {
    let (named, is_pool) = match (&requested.pool, &requested.vmta) {
        (None, None) => return Ok(None),
        (Some(pool), Some(vmta)) => {
            return Err(RouteRefusal::Both {
                pool: pool.field,
                vmta: vmta.field,
            });
        }
        (Some(pool), None) => (pool, true),
        (None, Some(vmta)) => (vmta, false),
    };
    let what = if is_pool { "pool" } else { "VMTA" };
    match asker {
        Asker::Untrusted => {
            return Err(RouteRefusal::Untrusted { field: named.field });
        }
        Asker::Customer(customer) => {
            let own = config.pool_for(customer).is_some_and(|pool| {
                if is_pool {
                    pool.name == named.name
                } else {
                    pool.vmtas.contains(&named.name)
                }
            });
            if !own {
                return Err(RouteRefusal::Foreign {
                    field: named.field,
                    what,
                    name: named.name.clone(),
                    customer: customer.to_string(),
                });
            }
        }
        Asker::Trusted => {}
    }
    let known = if is_pool {
        config.pools.iter().any(|p| p.name == named.name)
    } else {
        config.vmta(&named.name).is_some()
    };
    if !known {
        return Err(RouteRefusal::Unknown {
            field: named.field,
            what,
            name: named.name.clone(),
        });
    }
    Ok(Some(if is_pool {
        RouteChoice::Pool(named.name.clone())
    } else {
        RouteChoice::Vmta(named.name.clone())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_and_taken_off_every_one() {
        let message =
            b"From: a@b\r\nMessage-ID: <id.1@src.example>\r\nX-Volley-Campaign: spring\r\n\
            x-volley-pool: p2\r\nSubject: hi\r\nX-Volley-Pool: p3\r\nX-VOLLEY-VMTA:\r\n  v2\r\n\r\n\
            X-Volley-Pool: in the body\r\n"
                .to_vec();
        let (found, rest) = take(message);
        assert_eq!(found.message_id, "id.1@src.example");
        assert_eq!(found.requested.campaign.as_deref(), Some("spring"));
        let pool = found.requested.pool.unwrap();
        assert_eq!((pool.name.as_str(), pool.field), ("p2", POOL_HEADER));
        assert_eq!(found.requested.vmta.unwrap().name, "v2");
        assert_eq!(
            rest,
            b"From: a@b\r\nMessage-ID: <id.1@src.example>\r\nSubject: hi\r\n\r\n\
              X-Volley-Pool: in the body\r\n"
                .to_vec()
        );
    }

    #[test]
    fn tls_required_no_is_read_and_left_in_place() {
        let message = b"Subject: x\r\nTLS-Required:  NO \r\n\r\nTLS-Required: yes\r\n".to_vec();
        let before = message.as_ptr();
        let (found, rest) = take(message);
        assert!(found.tls_required_no);
        assert_eq!(rest.as_ptr(), before, "the field is passed on");
        let (found, _) = take(b"tls-required: yes\r\n\r\n".to_vec());
        assert!(!found.tls_required_no, "only the value No counts");
        let (found, _) = take(b"Subject: x\r\n\r\nTLS-Required: No\r\n".to_vec());
        assert!(!found.tls_required_no, "a body line is not a header");
    }

    #[test]
    fn a_message_without_them_is_not_copied() {
        let message = b"Subject: x\r\n\r\nbody\r\n".to_vec();
        let before = message.as_ptr();
        let (found, rest) = take(message);
        assert_eq!(found, Found::default());
        assert_eq!(rest.as_ptr(), before);
    }

    #[test]
    fn values_are_sanitized_and_bounded() {
        assert_eq!(sanitize(" a\tb\u{7f}c\r\n d \u{85}", 100), "abc d");
        // Cut on a character boundary: "é" is two bytes.
        assert_eq!(sanitize("aé", 2), "a");
        let long = format!(
            "X-Volley-Campaign: {}\r\nMessage-ID: <{}@x>\r\n\r\n",
            "c".repeat(500),
            "m".repeat(500)
        );
        let (found, _) = take(long.into_bytes());
        assert_eq!(found.requested.campaign.unwrap().len(), CAMPAIGN_BYTES_MAX);
        assert_eq!(found.message_id.len(), MESSAGE_ID_BYTES_MAX);
        assert!(found.message_id.starts_with("mmm"));
        let (found, _) = take(format!("X-Volley-Pool: {}\r\n\r\n", "p".repeat(300)).into_bytes());
        assert_eq!(
            found.requested.pool.unwrap().name.len(),
            ROUTE_NAME_BYTES_MAX
        );
        // Written without brackets, kept as written.
        let (found, _) = take(b"Message-Id: bare@x\r\n\r\n".to_vec());
        assert_eq!(found.message_id, "bare@x");
    }

    #[test]
    fn inject_fields_win_over_headers() {
        let api = Requested {
            campaign: Some("api".into()),
            pool: None,
            vmta: Some(Named {
                name: "v1".into(),
                field: "vmta",
            }),
        };
        let headers = Requested {
            campaign: Some("header".into()),
            pool: Some(Named {
                name: "p".into(),
                field: POOL_HEADER,
            }),
            vmta: None,
        };
        let merged = api.or(headers);
        assert_eq!(merged.campaign.as_deref(), Some("api"));
        assert_eq!(merged.pool.unwrap().name, "p");
        assert_eq!(merged.vmta.unwrap().field, "vmta");
    }

    fn config() -> Config {
        Config::parse(
            r#"
[[listener]]
address = "127.0.0.1:2525"
[[vmta]]
name = "v1"
source_ip = "127.0.0.2"
ehlo_hostname = "v1.test"
[[vmta]]
name = "v2"
source_ip = "127.0.0.3"
ehlo_hostname = "v2.test"
[[pool]]
name = "default"
vmtas = ["v1"]
[[pool]]
name = "p2"
vmtas = ["v2"]
[[customer]]
name = "acme"
pool = "p2"
[[customer]]
name = "other"
"#,
        )
        .unwrap()
    }

    fn asked(pool: Option<&str>, vmta: Option<&str>) -> Requested {
        let named = |name: &str, field| Named {
            name: name.into(),
            field,
        };
        Requested {
            campaign: None,
            pool: pool.map(|p| named(p, POOL_HEADER)),
            vmta: vmta.map(|v| named(v, VMTA_HEADER)),
        }
    }

    #[test]
    fn who_may_choose_what() {
        let config = config();
        let pool = |n: &str| Ok(Some(RouteChoice::Pool(n.into())));
        let vmta = |n: &str| Ok(Some(RouteChoice::Vmta(n.into())));
        let choose = |p, v, asker| choose_route(&config, &asked(p, v), asker);
        assert_eq!(choose(None, None, Asker::Untrusted), Ok(None));
        // A relay network: anything configured.
        assert_eq!(choose(Some("p2"), None, Asker::Trusted), pool("p2"));
        assert_eq!(choose(None, Some("v1"), Asker::Trusted), vmta("v1"));
        assert!(matches!(
            choose(Some("nope"), None, Asker::Trusted),
            Err(RouteRefusal::Unknown { what: "pool", .. })
        ));
        assert!(matches!(
            choose(None, Some("nope"), Asker::Trusted),
            Err(RouteRefusal::Unknown { what: "VMTA", .. })
        ));
        // An AUTH customer: its own pool and its VMTAs only.
        let acme = Asker::Customer("acme");
        assert_eq!(choose(Some("p2"), None, acme), pool("p2"));
        assert_eq!(choose(None, Some("v2"), acme), vmta("v2"));
        for (p, v) in [
            (Some("default"), None),
            (None, Some("v1")),
            (Some("nope"), None),
        ] {
            assert!(
                matches!(choose(p, v, acme), Err(RouteRefusal::Foreign { .. })),
                "{p:?} {v:?}"
            );
        }
        // A customer without a pool of its own sends through `default`: that one is its own.
        assert_eq!(
            choose(Some("default"), None, Asker::Customer("other")),
            pool("default")
        );
        assert_eq!(
            choose(Some("p2"), None, Asker::Untrusted),
            Err(RouteRefusal::Untrusted { field: POOL_HEADER })
        );
        assert_eq!(
            choose(Some("p2"), Some("v2"), Asker::Trusted),
            Err(RouteRefusal::Both {
                pool: POOL_HEADER,
                vmta: VMTA_HEADER
            })
        );
    }
}
