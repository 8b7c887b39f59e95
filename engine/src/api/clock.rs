//! `POST /v1/clock/advance {"seconds": N}`: moves the process's wall time forward (tests of
//! what happens after a day, such as TLS-RPT periods). Only with `[server] test_clock = true`;
//! otherwise the route does not exist (404).

use serde::Deserialize;
use serde_json::json;

use super::ApiCore;
use super::http::Response;

/// Most seconds one call moves the clock: a year.
pub const ADVANCE_S_MAX: u64 = 366 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceRequest {
    seconds: u64,
}

pub fn advance(core: &ApiCore, path: &str, body: &[u8]) -> Response {
    if !core.config().server.test_clock {
        return Response::error(404, format!("no route for POST {path}"));
    }
    let request: AdvanceRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Response::error(400, format!("expected {{\"seconds\": N}}: {e}")),
    };
    if request.seconds > ADVANCE_S_MAX {
        return Response::error(400, format!("seconds: at most {ADVANCE_S_MAX}"));
    }
    let offset_s = crate::clock::advance(request.seconds);
    log::warn!(
        "test clock: wall time moved {} s forward ({offset_s} s in all)",
        request.seconds
    );
    Response::json(
        200,
        json!({"offset_s": offset_s, "now_s": crate::clock::unix_s()}),
    )
}
