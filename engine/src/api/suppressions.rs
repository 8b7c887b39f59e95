//! `/v1/suppressions`: the customers' suppression lists (see `suppression`). Every change is
//! journaled and fsynced on the blocking pool before the answer; reads are a lookup in the core's
//! snapshot.

use serde::Deserialize;
use serde_json::json;

use super::ApiCore;
use super::http::Response;
use crate::suppression::{MAX_BULK, SuppressionError, normalize};

/// `%XX` escapes of a path segment decoded (`user%40example.com`); `None` when malformed.
fn percent_decoded(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn address_of(segment: &str) -> Result<String, Response> {
    percent_decoded(segment)
        .as_deref()
        .and_then(normalize)
        .ok_or_else(|| Response::error(400, format!("not an address: {segment:?}")))
}

/// Changes the list durably (journal write and fsync off the reactor); the entries after.
pub(super) async fn change_durably(
    core: &ApiCore,
    customer: &str,
    addresses: Vec<String>,
    added: bool,
) -> Result<usize, SuppressionError> {
    let list = core.suppressions.shared().clone();
    let name = customer.to_string();
    glommio::executor()
        .spawn_blocking(move || list.change(&name, &addresses, added))
        .await
}

async fn change(core: &ApiCore, customer: &str, addresses: Vec<String>, added: bool) -> Response {
    let count = addresses.len();
    match change_durably(core, customer, addresses, added).await {
        Ok(entries) => Response::json(
            200,
            json!({"customer": customer, "changed": count, "suppressed": added, "entries": entries}),
        ),
        Err(e @ SuppressionError::Full) => Response::error(507, e.to_string()),
        Err(e) => Response::error(500, format!("not changed: {e}")),
    }
}

/// `GET|PUT|DELETE /v1/suppressions/{customer}/{address}`.
pub async fn one(core: &ApiCore, method: &str, customer: &str, segment: &str) -> Response {
    let address = match address_of(segment) {
        Ok(a) => a,
        Err(response) => return response,
    };
    match method {
        "GET" => {
            if core.suppressions.is_suppressed(customer, &address) {
                Response::json(
                    200,
                    json!({"customer": customer, "address": address, "suppressed": true}),
                )
            } else {
                Response::error(404, format!("{address} is not suppressed for {customer}"))
            }
        }
        "PUT" => change(core, customer, vec![address], true).await,
        "DELETE" => {
            if !core.suppressions.is_suppressed(customer, &address) {
                return Response::error(404, format!("{address} is not suppressed for {customer}"));
            }
            change(core, customer, vec![address], false).await
        }
        _ => Response::error(405, "GET, PUT or DELETE"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    addresses: Vec<String>,
    /// `false` lifts the addresses instead (bulk removal).
    #[serde(default = "yes")]
    suppress: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/suppressions/{customer}` with `{"addresses": [...]}`: one journal write and one
/// fsync for the whole list. Any address that is not one refuses the request (nothing changed).
pub async fn bulk(core: &ApiCore, customer: &str, body: &[u8]) -> Response {
    let bulk: Bulk = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, format!("expected {{\"addresses\": [...]}}: {e}")),
    };
    if bulk.addresses.len() > MAX_BULK {
        return Response::error(413, format!("at most {MAX_BULK} addresses a request"));
    }
    let mut addresses = Vec::with_capacity(bulk.addresses.len());
    for a in &bulk.addresses {
        match normalize(a) {
            Some(n) => addresses.push(n),
            None => return Response::error(400, format!("not an address: {a:?}")),
        }
    }
    change(core, customer, addresses, bulk.suppress).await
}

/// `GET /v1/suppressions`: entries in the node's list.
pub fn count(core: &ApiCore) -> Response {
    let snapshot = core.suppressions.shared().snapshot();
    Response::json(200, json!({"entries": snapshot.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decoded("a%40b.test").as_deref(), Some("a@b.test"));
        assert_eq!(percent_decoded("a%2Bx@b").as_deref(), Some("a+x@b"));
        assert_eq!(percent_decoded("plain@b").as_deref(), Some("plain@b"));
        assert_eq!(percent_decoded("bad%4"), None);
        assert_eq!(percent_decoded("bad%zz"), None);
    }
}
