//! The control API's routes (interface.md): health, metrics, injection, queues, events, and changes
//! to the running configuration. Served by core 0; what other cores must do reaches them through the
//! router (queue commands) or a published configuration (changes).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiCore;
use super::http::{Request, Response};
use crate::config::entries;
use crate::envelope::{BodyType, Envelope, Recipient};
use crate::router::{AdminCommand, CoreMessage};

/// Events returned by one `GET /v1/events` at most.
const EVENTS_PER_PAGE_MAX: usize = 10_000;
/// Recipients of one injected message at most.
const INJECT_RECIPIENTS_MAX: usize = 10_000;

pub async fn handle(core: Rc<ApiCore>, request: Request) -> Response {
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "health"]) => health(&core),
        ("GET", ["metrics"]) => Response::text(200, metrics(&core)),
        ("GET", ["v1", "cluster"]) => cluster(&core).await,
        ("POST", ["v1", "inject"]) => inject(&core, &request).await,
        ("GET", ["v1", "queues"]) => queues(&core),
        ("POST", ["v1", "queues", "reroute"]) => {
            super::reroute::reroute(&core, &request.body).await
        }
        ("POST", ["v1", "queues", action]) => queue_command(&core, action, &request.body).await,
        ("GET", ["v1", "messages", id]) => super::messages::show(&core, id).await,
        ("POST", ["v1", "messages", id, "bounce"]) => {
            super::messages::bounce(&core, id, &request.body).await
        }
        ("GET", ["v1", "events"]) => events(&core, &request),
        ("GET", ["v1", "webhooks"]) => webhooks(&core),
        ("GET", ["v1", "vmta-status"]) => vmta_status(&core),
        ("POST", ["v1", "vmtas", name, action]) => vmta_command(&core, name, action, &request.body),
        ("GET", ["v1", "customers", name, "usage"]) => customer_usage(&core, name).await,
        ("POST", ["v1", "customers", name, "credits"]) => {
            add_credits(&core, name, &request.body).await
        }
        ("POST", ["v1", "customers", name, "resume"]) => resume_customer(&core, name).await,
        ("GET", ["v1", "config"]) => effective_config(&core),
        ("GET", ["v1", "suppressions"]) => super::suppressions::count(&core),
        (method, ["v1", "suppressions", customer, address]) => {
            super::suppressions::one(&core, method, customer, address).await
        }
        ("POST", ["v1", "suppressions", customer]) => {
            super::suppressions::bulk(&core, customer, &request.body).await
        }
        ("POST", ["v1", "unsubscribe", token]) => {
            super::reputation::unsubscribe(&core, token, &request).await
        }
        ("POST", ["v1", "feedback"]) => super::reputation::feedback(&core, &request).await,
        ("GET", ["v1", "tls-rpt"]) => super::tls_rpt::show(&core),
        ("POST", ["v1", "tls-rpt", "send"]) => super::tls_rpt::send(&core).await,
        ("POST", ["v1", "clock", "advance"]) => {
            super::clock::advance(&core, &request.path, &request.body)
        }
        ("GET", ["v1", "drain"]) => drain_state(&core),
        ("POST", ["v1", "drain"]) => drain_start(&core, &request.body).await,
        ("DELETE", ["v1", "drain"]) => drain_cancel(&core).await,
        (method, ["v1", section, name]) => {
            config_entry(&core, method, section, name, &request.body).await
        }
        (_, ["v1", section]) if entries::SECTIONS.contains(section) => config_list(&core, section),
        _ => Response::error(
            404,
            format!("no route for {} {}", request.method, request.path),
        ),
    }
}

fn health(core: &ApiCore) -> Response {
    let control = &core.node.control;
    let serving = control.all_cores_ready() && !control.stopping();
    let body = json!({
        "status": if serving { "serving" } else if control.stopping() { "stopping" } else { "starting" },
        "cores": control.core_count,
        "cores_ready": control.cores_ready.load(std::sync::atomic::Ordering::Acquire),
        "connections": control.connections(),
    });
    Response::json(if serving { 200 } else { 503 }, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectRequest {
    sender: String,
    recipients: Vec<String>,
    content: String,
    #[serde(default)]
    customer: Option<String>,
    /// Accounted with the message's events (`X-Volley-Campaign` in the content otherwise).
    #[serde(default)]
    campaign: Option<String>,
    /// Send through this pool or this VMTA instead of the customer's pool (at most one of them).
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    vmta: Option<String>,
    /// RFC 8689 REQUIRETLS, as on `MAIL FROM`: delivered only over TLS verified by DANE, MTA-STS
    /// or `tls = "required"`, to servers offering REQUIRETLS.
    #[serde(default)]
    requiretls: bool,
}

/// The request's `campaign`, `pool` and `vmta` as intake takes them; a campaign that is longer
/// than `CAMPAIGN_BYTES_MAX` or holds control characters is refused (an SMTP header's is cut and
/// cleaned instead: there is nobody to answer a precise error to).
fn inject_requests(
    campaign: Option<String>,
    pool: Option<String>,
    vmta: Option<String>,
) -> Result<crate::intake::tags::Requested, String> {
    use crate::intake::tags::{CAMPAIGN_BYTES_MAX, Named, Requested};
    if let Some(c) = &campaign
        && (c.len() > CAMPAIGN_BYTES_MAX || c.chars().any(char::is_control))
    {
        return Err(format!(
            "campaign: at most {CAMPAIGN_BYTES_MAX} bytes, no control characters"
        ));
    }
    let named = |name: String, field| Named { name, field };
    Ok(Requested {
        campaign: campaign.map(|c| c.trim().to_string()),
        pool: pool.map(|p| named(p, "pool")),
        vmta: vmta.map(|v| named(v, "vmta")),
    })
}

fn valid_address(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 254
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
}

/// Normalises line endings to CRLF (JSON clients mostly send bare LF).
fn crlf(content: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 40);
    let bytes = content.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn inject(core: &Rc<ApiCore>, request: &Request) -> Response {
    if core.node.drain.is_draining() {
        return Response::error(
            503,
            "this node is draining (GET /v1/drain): inject into another node",
        );
    }
    let req: InjectRequest = match serde_json::from_slice(&request.body) {
        Ok(r) => r,
        Err(e) => return Response::error(400, format!("bad inject request: {e}")),
    };
    if req.recipients.is_empty() || req.recipients.len() > INJECT_RECIPIENTS_MAX {
        return Response::error(400, format!("1 to {INJECT_RECIPIENTS_MAX} recipients"));
    }
    if let Some(bad) = req
        .recipients
        .iter()
        .chain(std::iter::once(&req.sender).filter(|s| !s.is_empty()))
        .find(|a| !valid_address(a) || !a.contains('@'))
    {
        return Response::error(400, format!("invalid address {bad:?}"));
    }
    let config = core.config();
    if let Some(c) = &req.customer
        && config.customer(c).is_none()
    {
        return Response::error(400, format!("no customer {c:?}"));
    }
    let requested = match inject_requests(req.campaign, req.pool, req.vmta) {
        Ok(r) => r,
        Err(e) => return Response::error(400, e),
    };
    let body = crlf(&req.content);
    let max_bytes = config
        .listeners
        .iter()
        .map(|l| l.max_message_bytes)
        .max()
        .unwrap_or(50 << 20);
    if body.len() > max_bytes {
        return Response::error(413, format!("message over {max_bytes} bytes"));
    }
    let envelope = Envelope {
        smtputf8: !req.sender.is_ascii() || req.recipients.iter().any(|r| !r.is_ascii()),
        requiretls: req.requiretls,
        sender: req.sender,
        recipients: req.recipients.into_iter().map(Recipient::new).collect(),
        body_type: if body.is_ascii() {
            BodyType::SevenBit
        } else {
            BodyType::EightBitMime
        },
        ..Envelope::default()
    };
    let origin = crate::intake::Origin::Api {
        peer: request.peer.ip(),
        customer: req.customer,
        requested,
    };
    match crate::intake::accept(&core.placement, origin, envelope, body).await {
        Ok(accepted) => Response::json(
            202,
            json!({ "id": accepted.id.to_string(), "recipients": accepted.recipients }),
        ),
        Err(refusal) => Response::error(refusal.http_status(), refusal.to_string()),
    }
}

fn queues(core: &ApiCore) -> Response {
    let list: Vec<Value> = core
        .queue_board
        .all()
        .into_iter()
        .map(|q| {
            let state = match q.state {
                crate::queue::QueueState::Active => "active",
                crate::queue::QueueState::Suspended { .. }
                | crate::queue::QueueState::RateWait { .. } => "suspended",
            };
            let reason = q.state.reason();
            json!({
                "vmta": q.vmta, "domain": q.domain, "size": q.size(), "ready": q.ready,
                "deferred": q.deferred, "state": state, "reason": reason,
                "connections": q.connections, "next_attempt_s": q.next_attempt_s,
                "next_attempt": q.next_attempt_s.map(crate::clock::rfc3339),
                "delivered": q.stats.delivered, "bounced": q.stats.bounced,
                "last_deferral": q.last_deferral,
                "backoff_level": q.backoff_level, "max_connections": q.max_connections,
            })
        })
        .collect();
    Response::json(200, json!({ "queues": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueCommand {
    domain: String,
    #[serde(default)]
    vmta: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn queue_command(core: &ApiCore, action: &str, body: &[u8]) -> Response {
    let c: QueueCommand = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => {
            return Response::error(
                400,
                format!("expected {{\"domain\", \"vmta\"?, \"reason\"?}}: {e}"),
            );
        }
    };
    let reason = c.reason.unwrap_or_else(|| "by the operator".into());
    let command = match action {
        "suspend" => AdminCommand::Suspend {
            domain: c.domain,
            vmta: c.vmta,
            reason,
        },
        "resume" => AdminCommand::Resume {
            domain: c.domain,
            vmta: c.vmta,
        },
        "retry" => AdminCommand::Retry {
            domain: c.domain,
            vmta: c.vmta,
        },
        "bounce" => AdminCommand::Bounce {
            domain: c.domain,
            vmta: c.vmta,
            reason,
        },
        other => return Response::error(404, format!("no queue action {other:?}")),
    };
    log::info!("API: queue {action}: {command:?}");
    core.router()
        .broadcast(|| CoreMessage::Admin(command.clone()))
        .await;
    Response::json(202, json!({ "accepted": action }))
}

/// The VMTAs taken out of their pools, with why and until when.
fn vmta_status(core: &ApiCore) -> Response {
    // `[reputation]` results per VMTA: `fcrdns` (null when not checked) and the zones listing it.
    let checks: Vec<Value> = core
        .reputation
        .all()
        .into_iter()
        .map(|r| {
            json!({
                "vmta": r.vmta,
                "source_ip": r.source_ip.to_string(),
                "ehlo_hostname": r.ehlo_hostname,
                "fcrdns": r.fcrdns,
                "dnsbl_listed": r.listed_in(),
                "dnsbl": r.dnsbl,
                "checked_unix_s": r.checked_unix_s,
            })
        })
        .collect();
    let list: Vec<Value> = core
        .placement
        .board
        .list(crate::clock::unix_s())
        .into_iter()
        .map(|(name, d)| {
            json!({ "vmta": name, "reason": d.reason, "since_s": d.since_s, "until_s": d.until_s })
        })
        .collect();
    Response::json(200, json!({ "disabled": list, "vmtas": checks }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VmtaCommand {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/vmtas/{name}/disable|enable` (body optional: `{"reason"}`).
fn vmta_command(core: &ApiCore, name: &str, action: &str, body: &[u8]) -> Response {
    if core.config().vmta(name).is_none() {
        return Response::error(404, format!("no VMTA {name:?}"));
    }
    let command: VmtaCommand = if body.is_empty() {
        VmtaCommand::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => return Response::error(400, format!("expected {{\"reason\"?}}: {e}")),
        }
    };
    let board = &core.placement.board;
    match action {
        "disable" => {
            let reason = command.reason.unwrap_or_else(|| "by the operator".into());
            log::info!("API: VMTA {name} disabled: {reason}");
            board.disable(name, &reason, crate::clock::unix_s(), None);
            Response::json(200, json!({ "vmta": name, "enabled": false }))
        }
        "enable" => {
            log::info!("API: VMTA {name} enabled");
            board.enable(name);
            Response::json(200, json!({ "vmta": name, "enabled": true }))
        }
        other => Response::error(404, format!("no VMTA action {other:?}")),
    }
}

/// A customer's sending-limit counters now.
/// Credits one top-up may add: a typo of a few digits should not sell a million messages.
const MAX_CREDITS_PER_TOP_UP: u64 = 1_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUp {
    add: u64,
}

/// `POST /v1/customers/{name}/credits {"add": N}`: a PAYG top-up, atomic with consumption (a
/// counter added to, not a customer entry replaced) and durable before the 200: in `limits.json`
/// (saved off the reactor) or, with `[cluster]`, in Redis.
async fn add_credits(core: &ApiCore, name: &str, body: &[u8]) -> Response {
    if core.config().customer(name).is_none() {
        return Response::error(404, format!("no customer {name:?}"));
    }
    let add = match serde_json::from_slice::<TopUp>(body) {
        Ok(t) if (1..=MAX_CREDITS_PER_TOP_UP).contains(&t.add) => t.add,
        Ok(_) => {
            return Response::error(400, format!("add must be 1..={MAX_CREDITS_PER_TOP_UP}"));
        }
        Err(e) => return Response::error(400, format!("expected {{\"add\": N}}: {e}")),
    };
    let total = match core.limits.cluster() {
        Some(cluster) => match crate::limits::shared::add_cluster_credits(cluster, name, add).await
        {
            Ok(total) => total,
            Err(e) => return Response::error(503, format!("credits not added: {e}")),
        },
        None => {
            let total = core.limits.add_credits(name, add);
            if let Err(e) = core.save_limits_now().await {
                return Response::error(500, format!("credits added but not saved: {e}"));
            }
            total
        }
    };
    core.accounting.record(&crate::accounting::AccountingEvent {
        kind: Some(crate::accounting::EventType::Credits),
        time: crate::clock::now_rfc3339().into(),
        customer: name.to_string().into(),
        credits_added: Some(add),
        ..Default::default()
    });
    log::info!("customer {name}: {add} credits added ({total} added in all)");
    Response::json(
        200,
        json!({"customer": name, "added": add, "credits_added": total}),
    )
}

fn metrics(core: &ApiCore) -> String {
    let mut text = core.node.metrics.render();
    text.push_str(&core.reputation.render_metrics());
    if let Some(cluster) = &core.node.cluster {
        text.push_str(&cluster.render_metrics());
    }
    if let Some(webhooks) = &core.webhooks {
        text.push_str(&webhooks.render_metrics());
    }
    text
}

/// `GET /v1/webhooks`: each webhook's lag, last success and last error, and the journal.
fn webhooks(core: &ApiCore) -> Response {
    match &core.webhooks {
        Some(webhooks) => Response::json(200, webhooks.status(&core.config())),
        None => Response::json(200, json!({ "webhooks": [] })),
    }
}

/// `GET /v1/cluster`: the nodes of the registry, as Redis has them.
async fn cluster(core: &ApiCore) -> Response {
    let Some(cluster) = &core.node.cluster else {
        return Response::error(404, "this node has no [cluster] section");
    };
    match cluster.nodes().await {
        Ok(nodes) => Response::json(
            200,
            json!({
                "node": cluster.node,
                "redis_up": true,
                "live_nodes": cluster.health().live_nodes(),
                "nodes": nodes,
            }),
        ),
        Err(e) => Response::error(503, format!("cluster registry unavailable: {e}")),
    }
}

/// A customer's usage: with `[cluster]`, the cluster's totals from Redis (and this node's part
/// under `node`); without, this node's.
/// `POST /v1/customers/{name}/resume`: ends a bounce-rate pause (durably, before the answer) and
/// starts the customer's window afresh.
async fn resume_customer(core: &ApiCore, name: &str) -> Response {
    if core.config().customer(name).is_none() {
        return Response::error(404, format!("no customer {name:?}"));
    }
    let ended = core.limits.resume(name);
    if let Err(e) = core.save_limits_now().await {
        return Response::error(500, format!("resumed but not saved: {e}"));
    }
    if let Some(pause) = &ended {
        log::info!(
            "API: customer {name} resumed (was paused: {})",
            pause.reason
        );
        core.accounting.record(&crate::accounting::AccountingEvent {
            kind: Some(crate::accounting::EventType::CustomerResumed),
            time: crate::clock::now_rfc3339().into(),
            customer: name.to_string().into(),
            response: pause.reason.as_str().into(),
            ..Default::default()
        });
    }
    Response::json(200, json!({"customer": name, "resumed": ended.is_some()}))
}

async fn customer_usage(core: &ApiCore, name: &str) -> Response {
    let config = core.config();
    let Some(customer) = config.customer(name) else {
        return Response::error(404, format!("no customer {name:?}"));
    };
    let now_ms = crate::clock::unix_ms();
    let node = core.limits.usage(name, now_ms / 1000);
    let node_view = (
        u64::from(node.0),
        u64::from(node.1),
        node.2,
        core.limits.credits_added(name),
    );
    // Redis unreachable: this node's view, saying why (the node keeps sending under on_redis_down).
    let mut cluster_error = None;
    let (scope, (hour, day, spent, added)) = match core.limits.cluster() {
        None => ("node", node_view),
        Some(cluster) => match crate::limits::shared::cluster_usage(cluster, name, now_ms).await {
            Ok(u) => ("cluster", (u.hour, u.day, u.credits_spent, u.credits_added)),
            Err(e) => {
                cluster_error = Some(e.to_string());
                ("node", node_view)
            }
        },
    };
    let credits = customer.credits.saturating_add(added);
    let (pause, (outcomes, bounces)) = core.limits.bounce_state(name);
    Response::json(
        200,
        json!({
            "customer": name,
            "paused": pause.map(|p| json!({"reason": p.reason, "since_s": p.since_s})),
            "bounce_window": {"outcomes": outcomes, "hard_bounces": bounces,
                "max_bounce_percent": customer.max_bounce_percent,
                "bounce_window_messages": customer.bounce_window_messages},
            "scope": scope,
            "messages_this_hour": hour, "max_messages_per_hour": customer.max_messages_per_hour,
            "messages_today": day, "max_messages_per_day": customer.max_messages_per_day,
            "credits": credits, "credits_configured": customer.credits, "credits_added": added,
            "credits_spent": spent, "credits_left": credits.saturating_sub(spent),
            "node": {"messages_this_hour": node.0, "messages_today": node.1, "credits_spent": node.2},
            "cluster_error": cluster_error,
        }),
    )
}

fn events(core: &ApiCore, request: &Request) -> Response {
    let after = request
        .query_param("after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let limit = request
        .query_param("limit")
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
        .min(EVENTS_PER_PAGE_MAX);
    let events: Vec<Value> = core
        .node
        .events
        .after(after, limit)
        .into_iter()
        .filter_map(|(id, line)| {
            let mut v: Value = serde_json::from_str(&line).ok()?;
            v["event_id"] = id.into();
            Some(v)
        })
        .collect();
    Response::json(200, json!({ "events": events }))
}

/// `GET /v1/drain`: whether the node drains, where to, and how far it got.
fn drain_state(core: &ApiCore) -> Response {
    let drain = &core.node.drain;
    let target = drain.target();
    let metrics = &core.node.metrics;
    let left: i64 = metrics
        .cores
        .iter()
        .map(|c| c.queued_recipients.load(Ordering::Relaxed))
        .sum();
    let duplicates: u64 = metrics
        .cores
        .iter()
        .map(|c| c.xfer_duplicates.load(Ordering::Relaxed))
        .sum();
    let left = left.max(0);
    Response::json(
        200,
        json!({
            "draining": target.is_some(),
            "to": target.as_ref().map(|t| t.to.clone()),
            "since_s": target.as_ref().map(|t| t.since_s),
            "recipients_left": left,
            "complete": target.is_some() && left == 0,
            "recipients_handed_over": drain.handed_over_recipients.load(Ordering::Relaxed),
            "messages_handed_over": drain.handed_over_messages.load(Ordering::Relaxed),
            "duplicates_received": duplicates,
            "last_error": drain.last_error(),
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    to: String,
}

/// `POST /v1/drain {"to": "HOST:PORT"}`: the node stops taking mail and hands its queue over.
/// Answered once `drain.json` is durable, so the drain survives a crash.
async fn drain_start(core: &ApiCore, body: &[u8]) -> Response {
    let request: DrainRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Response::error(400, format!("expected {{\"to\": \"HOST:PORT\"}}: {e}")),
    };
    let config = core.config();
    if config.cluster.is_none() {
        return Response::error(
            409,
            "a drain needs [cluster] (the node name goes with the mail handed over)",
        );
    }
    let Some((host, port)) = crate::config::parse_next_hop(&request.to) else {
        return Response::error(400, format!("{:?} is not HOST:PORT", request.to));
    };
    let to_self = host.parse::<std::net::IpAddr>().is_ok_and(|ip| {
        config
            .listeners
            .iter()
            .any(|l| l.address == (ip, port).into())
    });
    if to_self {
        return Response::error(400, format!("{} is this node's own listener", request.to));
    }
    let target = crate::shard::DrainTarget {
        to: request.to,
        since_s: crate::clock::unix_s(),
    };
    let drain = core.node.drain.clone();
    let begun = glommio::executor()
        .spawn_blocking(move || drain.begin(target))
        .await;
    if let Err(e) = begun {
        log::error!("API: drain not started: {e}");
        return Response::error(500, format!("drain not started: {e}"));
    }
    if let Some(t) = core.node.drain.target() {
        log::warn!("API: draining to {}: no new mail is taken", t.to);
    }
    drain_state(core)
}

/// `DELETE /v1/drain`: the node takes mail and delivers again; what was handed over is gone.
async fn drain_cancel(core: &ApiCore) -> Response {
    let drain = core.node.drain.clone();
    let cancelled = glommio::executor()
        .spawn_blocking(move || drain.cancel())
        .await;
    if let Err(e) = cancelled {
        log::error!("API: drain not cancelled: {e}");
        return Response::error(500, format!("drain not cancelled: {e}"));
    }
    log::warn!("API: drain cancelled: taking and delivering mail again");
    drain_state(core)
}

/// `GET /v1/config`: the configuration in force (the file with the API's changes over it), and
/// which entries come from the API (everything else is the file's).
fn effective_config(core: &ApiCore) -> Response {
    let config = core.config();
    let Ok(value) = toml::Value::try_from(&*config)
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
    else {
        return Response::error(500, "the configuration cannot be shown as JSON");
    };
    let changes: Vec<Value> = core
        .node
        .control
        .api_changes()
        .into_iter()
        .map(|c| {
            json!({
                "section": c.section, "name": c.name, "deleted": c.entry.is_none(), "at": c.at,
            })
        })
        .collect();
    Response::json(
        200,
        json!({
            "file": core.node.control.config_path.as_ref().map(|p| p.display().to_string()),
            "config": value,
            "from_api": changes,
        }),
    )
}

fn config_list(core: &ApiCore, section: &str) -> Response {
    let config = core.config();
    let names = entries::names(&config, section);
    let entries: Vec<Value> = names
        .iter()
        .filter_map(|n| entries::entry_json(&config, section, n))
        .collect();
    Response::json(200, json!({ section: entries }))
}

async fn config_entry(
    core: &ApiCore,
    method: &str,
    section: &str,
    name: &str,
    body: &[u8],
) -> Response {
    if !entries::SECTIONS.contains(&section) {
        return Response::error(404, format!("no section {section:?}"));
    }
    // A destination pattern is kept in the form recipient domains take (`normalize_domains`).
    let normalized = crate::config::normalize_pattern(name);
    let name = if section == "domains" {
        &normalized
    } else {
        name
    };
    let current = core.node.control.config();
    match method {
        "GET" => match entries::entry_json(&current, section, name) {
            Some(v) => Response::json(200, v),
            None => Response::error(404, format!("no {section} entry {name:?}")),
        },
        "PUT" | "DELETE" => {
            let mut next = (*current).clone();
            let body = (method == "PUT").then_some(body);
            match entries::edit(&mut next, section, name, body) {
                Ok(false) => return Response::error(404, format!("no {section} entry {name:?}")),
                Ok(true) => {}
                Err(e) => return Response::error(400, e),
            }
            next.normalize_domains();
            // What cannot be written as TOML (an integer above i64::MAX) could be neither shown
            // nor kept: refuse it rather than run an entry `GET` cannot see.
            if method == "PUT" && entries::entry_json(&next, section, name).is_none() {
                return Response::error(
                    400,
                    "a value does not fit the configuration (TOML integers are at most 9223372036854775807)",
                );
            }
            // Validation looks at files (certificates, keys), and the change is written to the
            // spool directory before it applies: off the reactor.
            let control = core.node.control.clone();
            let (section_owned, name_owned) = (section.to_string(), name.to_string());
            let applied = glommio::executor()
                .spawn_blocking(move || {
                    next.revalidate()
                        .map_err(|errors| (409, errors.to_string()))?;
                    control
                        .publish_api_change(&section_owned, &name_owned, Arc::new(next))
                        .map_err(|e| (500, format!("not kept: {e}")))
                })
                .await;
            if let Err((status, message)) = applied {
                return Response::error(status, message);
            }
            log::info!("API: {method} {section}/{name} applied and kept in the spool directory");
            match method {
                "PUT" => Response::json(
                    200,
                    entries::entry_json(&core.node.control.config(), section, name)
                        .unwrap_or(Value::Null),
                ),
                _ => Response::json(200, json!({ "deleted": name })),
            }
        }
        _ => Response::error(405, "GET, PUT or DELETE"),
    }
}
