//! `POST /v1/unsubscribe/{token}` (RFC 8058 one-click, a public path: no API token) and
//! `POST /v1/feedback` (ARF abuse reports): both put the recipient on the customer's suppression
//! list, durably, before answering, and write an accounting event.

use serde_json::json;

use super::ApiCore;
use super::http::{Request, Response};
use crate::accounting::{AccountingEvent, EventType};
use crate::reputation::{feedback, unsubscribe};

fn event<'a>(kind: EventType, customer: &'a str, recipient: &'a str) -> AccountingEvent<'a> {
    AccountingEvent {
        kind: Some(kind),
        time: crate::clock::now_rfc3339().into(),
        customer: customer.into(),
        recipient: recipient.into(),
        domain: crate::envelope::domain_of(recipient).into(),
        ..Default::default()
    }
}

/// `POST /v1/unsubscribe/{token}`: 200 once the recipient is suppressed; 404 for a token that is not
/// genuine (nothing changes), or when no `[unsubscribe] secrets` are set.
pub async fn unsubscribe(core: &ApiCore, token: &str, request: &Request) -> Response {
    let config = core.config();
    let Some((customer, recipient)) = unsubscribe::verify(&config.unsubscribe.secrets, token)
    else {
        log::info!(
            "unsubscribe: a token that is not genuine, from {}",
            request.peer.ip()
        );
        return Response::error(404, "no such unsubscribe link");
    };
    match super::suppressions::change_durably(core, &customer, vec![recipient.clone()], true).await
    {
        Ok(_) => {
            log::info!("unsubscribe: {recipient} from customer {customer}");
            core.accounting.record(&AccountingEvent {
                client_ip: request.peer.ip().to_string().into(),
                ..event(EventType::Unsubscribe, &customer, &recipient)
            });
            Response::json(
                200,
                json!({"customer": customer, "recipient": recipient, "unsubscribed": true}),
            )
        }
        Err(e) => Response::error(503, format!("not unsubscribed, try again: {e}")),
    }
}

/// `POST /v1/feedback[?customer=NAME]` with an ARF report as the body. The customer and the
/// recipient come from the original message's one-click unsubscribe token when it has one; else the
/// customer from `?customer=` and the recipient from `Original-Rcpt-To` (or the original's `To`).
/// `not-spam` reports are recorded but suppress nothing.
pub async fn feedback(core: &ApiCore, request: &Request) -> Response {
    let complaint = match feedback::parse(&request.body) {
        Ok(c) => c,
        Err(e) => return Response::error(400, format!("not an ARF report: {e}")),
    };
    let config = core.config();
    let from_token = complaint
        .original_list_unsubscribe
        .as_deref()
        .map(feedback::tokens_in_list_unsubscribe)
        .unwrap_or_default()
        .iter()
        .find_map(|t| unsubscribe::verify(&config.unsubscribe.secrets, t));
    let (customer, recipient) = match from_token {
        Some(found) => found,
        None => {
            let Some(customer) = request.query_param("customer").map(str::to_string) else {
                return Response::error(
                    400,
                    "cannot tell the customer: the original has no unsubscribe token of ours; name it with ?customer=",
                );
            };
            if config.customer(&customer).is_none() {
                return Response::error(404, format!("no customer {customer:?}"));
            }
            let Some(recipient) = complaint
                .original_rcpt_to
                .clone()
                .or_else(|| complaint.original_to.clone())
            else {
                return Response::error(
                    400,
                    "cannot tell the recipient: no Original-Rcpt-To and no single To in the original",
                );
            };
            (customer, recipient)
        }
    };
    let what = format!("{} ({})", complaint.feedback_type, complaint.user_agent);
    let suppress = complaint.feedback_type != "not-spam";
    if suppress
        && let Err(e) =
            super::suppressions::change_durably(core, &customer, vec![recipient.clone()], true)
                .await
    {
        return Response::error(503, format!("not suppressed, try again: {e}"));
    }
    log::info!("feedback: {what} about {recipient} of customer {customer}");
    // The report's Source-IP is the address the mail came from: one of this node's VMTAs.
    core.accounting.record(&AccountingEvent {
        response: what.into(),
        source_ip: complaint.source_ip.clone().unwrap_or_default().into(),
        ..event(EventType::Complaint, &customer, &recipient)
    });
    Response::json(
        200,
        json!({"customer": customer, "recipient": recipient, "feedback_type": complaint.feedback_type, "suppressed": suppress}),
    )
}
