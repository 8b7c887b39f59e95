//! The HTTP control API (interface.md), served by core 0, and the client the admin commands use.

pub mod client;
pub mod http;
mod routes;

use std::rc::Rc;

use crate::runtime::CoreContext;

/// Binds the API address and serves it on this core.
pub fn start(core: &Rc<CoreContext>) -> Result<(), String> {
    let config = core.config();
    let listener = glommio::net::TcpListener::bind(config.api.address).map_err(|e| {
        format!(
            "cannot listen on the API address {}: {e}",
            config.api.address
        )
    })?;
    let weak = Rc::downgrade(core);
    let handler: http::Handler = Rc::new(move |request| {
        let weak = weak.clone();
        Box::pin(async move {
            match weak.upgrade() {
                Some(core) => routes::handle(core, request).await,
                None => http::Response::error(503, "stopping"),
            }
        })
    });
    let weak = Rc::downgrade(core);
    let token: http::TokenSource = Rc::new(move || {
        weak.upgrade()
            .map(|core| core.config().api.token.clone())
            .unwrap_or_default()
    });
    glommio::spawn_local(http::serve(listener, token, handler)).detach();
    log::info!("API on http://{}", config.api.address);
    Ok(())
}
