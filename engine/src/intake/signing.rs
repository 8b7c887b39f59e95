//! The DKIM step of intake: a `DKIM-Signature:` goes under the `Received:` line when a `[[dkim]]`
//! entry signs for the message. The signature covers the message as stored (the headers intake
//! added after `Received:` included), not the `Received:` line. RSA signatures (about a millisecond
//! each) are made on the core's blocking thread, so the reactor keeps serving other sessions.
//! A failure is counted and logged and the message goes unsigned.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::dkim::{DkimSigners, SignError};
use crate::metrics::CoreCounters;

/// The message's header (with a signature when one applies) and its body, handed back.
pub async fn sign(
    signers: Arc<DkimSigners>,
    counters: &CoreCounters,
    header: Vec<u8>,
    body: Vec<u8>,
    envelope_sender: &str,
    now_s: u64,
) -> (Vec<u8>, Vec<u8>) {
    if signers.is_empty() {
        return (header, body);
    }
    let costly = signers.is_costly_for(&body, envelope_sender);
    let (header, body, result) = if costly {
        let sender = envelope_sender.to_string();
        let job = move || {
            let result = signature(&signers, &header, &body, &sender, now_s);
            (header, body, result)
        };
        glommio::executor().spawn_blocking(job).await
    } else {
        let result = signature(&signers, &header, &body, envelope_sender, now_s);
        (header, body, result)
    };
    match result {
        Ok(Some((at, signature))) => {
            counters.dkim_signed.fetch_add(1, Ordering::Relaxed);
            let (received, added) = header.split_at(at);
            ([received, &signature, added].concat(), body)
        }
        Ok(None) => (header, body),
        Err(e) => {
            counters.dkim_sign_failures.fetch_add(1, Ordering::Relaxed);
            log::error!("dkim: message sent unsigned: {e}");
            (header, body)
        }
    }
}

/// Where the signature goes in `header` (after its first field, the `Received:` line) and the
/// signature, or `None` when no entry signs for the message.
fn signature(
    signers: &DkimSigners,
    header: &[u8],
    body: &[u8],
    envelope_sender: &str,
    now_s: u64,
) -> Result<Option<(usize, Vec<u8>)>, SignError> {
    let received_len = crate::rfc5322::split_message(header)
        .0
        .first()
        .map_or(0, |f| f.raw.len())
        .min(header.len());
    let added = &header[received_len..];
    let signed_input: std::borrow::Cow<[u8]> = if added.is_empty() {
        std::borrow::Cow::Borrowed(body)
    } else {
        std::borrow::Cow::Owned([added, body].concat())
    };
    Ok(signers
        .sign(&signed_input, envelope_sender, now_s)?
        .map(|s| (received_len, s)))
}
