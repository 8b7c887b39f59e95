//! Accepting connections: one SO_REUSEPORT socket per listener on every core, TLS (STARTTLS and
//! implicit), and the driver that moves bytes between a socket and `smtp::server::Session`.

mod session;
pub mod tls;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use glommio::net::TcpListener;

use crate::config::{Config, ListenerAuth, ListenerConfig, ListenerTls};
use crate::runtime::CoreContext;
use crate::smtp::server::ServerConfig;

/// One listener on one core.
pub struct ListenerContext {
    pub core: Rc<CoreContext>,
    pub listener: ListenerConfig,
    server_config: RefCell<Rc<ServerConfig>>,
    acceptor: Option<TlsAcceptor>,
}

impl ListenerContext {
    pub fn server_config(&self) -> Rc<ServerConfig> {
        self.server_config.borrow().clone()
    }

    fn implicit_tls(&self) -> Option<TlsAcceptor> {
        (self.listener.tls == ListenerTls::Implicit)
            .then(|| self.acceptor.clone())
            .flatten()
    }

    fn starttls(&self) -> Option<TlsAcceptor> {
        (self.listener.tls == ListenerTls::Starttls)
            .then(|| self.acceptor.clone())
            .flatten()
    }

    /// Applies a reloaded configuration to sessions that start from now on.
    pub fn reload(&self, config: &Config) {
        if let Some(l) = config
            .listeners
            .iter()
            .find(|l| l.address == self.listener.address)
        {
            *self.server_config.borrow_mut() = Rc::new(session_config(l, config));
        }
    }
}

fn session_config(l: &ListenerConfig, config: &Config) -> ServerConfig {
    ServerConfig {
        hostname: config.server.hostname.clone(),
        max_message_bytes: l.max_message_bytes,
        max_recipients: l.max_recipients,
        max_errors: l.max_errors,
        starttls_available: l.tls == ListenerTls::Starttls,
        auth_enabled: l.auth != ListenerAuth::Off,
        auth_required: l.auth == ListenerAuth::Required,
        command_timeout: Duration::from_millis(l.command_timeout_ms),
        data_timeout: Duration::from_millis(l.data_timeout_ms),
    }
}

/// Binds every configured listener on this core and serves them until the stop request.
pub fn start(core: &Rc<CoreContext>) -> Result<Vec<Rc<ListenerContext>>, String> {
    let config = core.config();
    let mut contexts = Vec::new();
    for l in &config.listeners {
        let socket = TcpListener::bind(l.address)
            .map_err(|e| format!("cannot listen on {}: {e}", l.address))?;
        let acceptor = match l.tls {
            ListenerTls::None => None,
            _ => core.shared.tls.clone().map(TlsAcceptor::from),
        };
        let ctx = Rc::new(ListenerContext {
            core: core.clone(),
            listener: l.clone(),
            server_config: RefCell::new(Rc::new(session_config(l, &config))),
            acceptor,
        });
        contexts.push(ctx.clone());
        glommio::spawn_local(accept_loop(socket, ctx)).detach();
    }
    Ok(contexts)
}

async fn accept_loop(socket: TcpListener, ctx: Rc<ListenerContext>) {
    let stop = ctx.core.stop_signal();
    loop {
        let accepted = futures_lite::future::or(async { Some(socket.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                glommio::spawn_local(session::serve_connection(stream, ctx.clone())).detach();
            }
            Some(Err(e)) => {
                log::warn!("accept on {}: {e}", ctx.listener.address);
                // Out of file descriptors and the like: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    log::debug!("listener {} closed", ctx.listener.address);
}
