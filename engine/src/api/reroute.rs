//! `POST /v1/queues/reroute {"domain", "vmta", "to_pool"}`: the queued recipients of one queue
//! move to VMTAs of another pool, picked per message as placement picks them. The queue lives on
//! one core (`router::owner_core`): that core moves them and says how many.
//!
//! Placement is not kept in the spool: after a restart, recovered recipients are placed again by
//! their message's pool, as all recovered mail is (docs/api.md).

use serde::Deserialize;
use serde_json::json;

use super::ApiCore;
use super::ask::ask;
use super::http::Response;
use crate::router::{Question, Rerouted, owner_core};

/// How long the API waits for the move (a queue of millions takes a while; it goes on anyway).
const REROUTE_WAIT_MS: u64 = 20_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerouteRequest {
    domain: String,
    vmta: String,
    to_pool: String,
}

pub async fn reroute(core: &ApiCore, body: &[u8]) -> Response {
    let request: RerouteRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Response::error(
                400,
                format!("expected {{\"domain\", \"vmta\", \"to_pool\"}}: {e}"),
            );
        }
    };
    let domain = crate::envelope::normalize_domain(&request.domain);
    if domain.is_empty() || request.vmta.is_empty() {
        return Response::error(400, "domain and vmta must not be empty");
    }
    let config = core.config();
    let Some(pool) = config.pools.iter().find(|p| p.name == request.to_pool) else {
        return Response::error(404, format!("no pool {:?}", request.to_pool));
    };
    if !pool.vmtas.iter().any(|v| *v != request.vmta) {
        return Response::error(
            409,
            format!(
                "pool {:?} has no VMTA other than {:?}",
                request.to_pool, request.vmta
            ),
        );
    }
    let owner = owner_core(&request.vmta, &domain, core.router().cores);
    let to_pool = request.to_pool.clone();
    let vmta = request.vmta.clone();
    let asked = ask(core, [owner], REROUTE_WAIT_MS, |answer| Question::Reroute {
        vmta: vmta.clone(),
        domain: domain.clone(),
        to_pool: to_pool.clone(),
        answer,
    })
    .await;
    let moved: Rerouted = match asked.map(|mut a| a.pop()) {
        Ok(Some(moved)) => moved,
        Ok(None) => return Response::error(500, "no answer from the queue's core"),
        Err(e) => return Response::error(504, e.to_string()),
    };
    let vmta_known = config.vmta(&request.vmta).is_some()
        || (config.vmtas.is_empty() && request.vmta == crate::placement::IMPLICIT_VMTA);
    if !moved.queue_found && !vmta_known {
        return Response::error(
            404,
            format!(
                "no queue {}/{domain} and no VMTA {:?}",
                request.vmta, request.vmta
            ),
        );
    }
    log::info!(
        "API: queue {}/{domain} rerouted to pool {}: {} moved, {} left",
        request.vmta,
        request.to_pool,
        moved.moved,
        moved.left
    );
    Response::json(
        200,
        json!({
            "vmta": request.vmta, "domain": domain, "to_pool": request.to_pool,
            "moved": moved.moved, "left": moved.left,
        }),
    )
}
