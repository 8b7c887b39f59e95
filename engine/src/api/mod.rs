//! The HTTP control API (interface.md), served by core 0, and the client the admin commands use.

mod ask;
pub mod client;
mod clock;
pub mod http;
pub mod message_text;
pub mod message_view;
mod messages;
pub mod queue_table;
mod reputation;
mod reroute;
mod routes;
pub mod status_table;
mod suppressions;
pub mod text_table;
pub mod tls_rpt;

use std::rc::Rc;

use crate::delivery::QueueBoard;
use crate::placement::Placement;
use crate::shard::Shard;

/// What the API on core 0 reaches: the shard, placement (injection goes through intake; the VMTA
/// board), and every core's queue list. Derefs to the shard.
pub struct ApiCore {
    pub shard: Rc<Shard>,
    pub placement: Rc<Placement>,
    pub queue_board: std::sync::Arc<QueueBoard>,
    /// With `[[webhook]]`: their progress, for `GET /v1/webhooks` and the metrics.
    pub webhooks: Option<std::sync::Arc<crate::webhook::Webhooks>>,
    /// The VMTAs' FCrDNS and DNSBL results (`[reputation]`).
    pub reputation: std::sync::Arc<crate::reputation::ReputationBoard>,
}

impl std::ops::Deref for ApiCore {
    type Target = Shard;

    fn deref(&self) -> &Shard {
        &self.shard
    }
}

/// Binds the API address and serves it on this core.
pub fn start(core: Rc<ApiCore>) -> Result<(), String> {
    let config = core.config();
    let listener = glommio::net::TcpListener::bind(config.api.address).map_err(|e| {
        format!(
            "cannot listen on the API address {}: {e}",
            config.api.address
        )
    })?;
    // The serving task owns the API's handle: the API lives as long as it serves.
    let api = core.clone();
    let handler: http::Handler = Rc::new(move |request| {
        let api = api.clone();
        Box::pin(async move { routes::handle(api, request).await })
    });
    let token: http::TokenSource = Rc::new(move || core.config().api.token.clone());
    glommio::spawn_local(http::serve(listener, token, handler)).detach();
    log::info!("API on http://{}", config.api.address);
    Ok(())
}
