//! Accepting connections: one SO_REUSEPORT socket per listener on every core, TLS (STARTTLS and
//! implicit), the PROXY protocol header on listeners behind a load balancer, and the driver that
//! moves bytes between a socket and `smtp::server::Session`.

mod body_budget;
mod prefixed;
pub mod proxy_header;
mod session;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use glommio::net::TcpListener;

use crate::auth::{AuthThrottle, Credentials};
use crate::config::{Config, ListenerAuth, ListenerConfig, ListenerTls};
use crate::placement::Placement;
use crate::shard::Shard;
use crate::smtp::server::ServerConfig;

/// What the listeners of one core reach: the shard, placement (through intake), the AUTH
/// credentials of the running configuration and the AUTH failure throttle. Derefs to the shard.
pub struct ListenerCore {
    pub shard: Rc<Shard>,
    pub placement: Rc<Placement>,
    credentials: RefCell<Credentials>,
    /// The configuration generation `credentials` were built from.
    credentials_generation: Cell<u64>,
    pub throttle: RefCell<AuthThrottle>,
}

impl ListenerCore {
    pub fn new(placement: Rc<Placement>) -> ListenerCore {
        let shard = placement.shard.clone();
        ListenerCore {
            credentials: RefCell::new(Credentials::from_config(&shard.config())),
            credentials_generation: Cell::new(shard.generation()),
            throttle: RefCell::new(AuthThrottle::default()),
            shard,
            placement,
        }
    }

    /// The AUTH credentials of the running configuration (rebuilt once per reload).
    pub fn credentials(&self) -> Credentials {
        let generation = self.shard.generation();
        if generation != self.credentials_generation.get() {
            self.credentials_generation.set(generation);
            *self.credentials.borrow_mut() = Credentials::from_config(&self.shard.config());
        }
        self.credentials.borrow().clone()
    }
}

impl std::ops::Deref for ListenerCore {
    type Target = Shard;

    fn deref(&self) -> &Shard {
        &self.shard
    }
}

/// One listener on one core.
pub struct ListenerContext {
    pub core: Rc<ListenerCore>,
    /// The bound address and the TLS mode are fixed for the listener's life (a restart changes
    /// them); everything else comes from `live`.
    address: SocketAddr,
    tls: ListenerTls,
    live: RefCell<Rc<LiveSettings>>,
    acceptor: Option<TlsAcceptor>,
}

/// What a reload changes, taken by each connection when it is accepted.
pub struct LiveSettings {
    pub listener: ListenerConfig,
    pub server: Rc<ServerConfig>,
    /// The TLS handshake (STARTTLS or implicit).
    pub tls_timeout: Duration,
    /// One write to the client.
    pub write_timeout: Duration,
    /// The whole PROXY header, on `proxy_protocol` listeners.
    pub proxy_timeout: Duration,
}

impl LiveSettings {
    /// `tls` is the mode the listener was started with, whatever the new file says.
    fn new(l: &ListenerConfig, config: &Config, tls: ListenerTls) -> LiveSettings {
        LiveSettings {
            listener: l.clone(),
            server: Rc::new(session_config(l, config, tls)),
            tls_timeout: Duration::from_millis(l.tls_timeout_ms),
            write_timeout: Duration::from_millis(l.write_timeout_ms),
            proxy_timeout: Duration::from_millis(l.proxy_timeout_ms),
        }
    }
}

impl ListenerContext {
    /// The settings for a connection accepted now.
    pub fn settings(&self) -> Rc<LiveSettings> {
        self.live.borrow().clone()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn implicit_tls(&self) -> Option<TlsAcceptor> {
        (self.tls == ListenerTls::Implicit)
            .then(|| self.acceptor.clone())
            .flatten()
    }

    fn starttls(&self) -> Option<TlsAcceptor> {
        (self.tls == ListenerTls::Starttls)
            .then(|| self.acceptor.clone())
            .flatten()
    }

    /// Applies a reloaded configuration to the connections accepted from now on: every key of
    /// the listener but `address` and `tls`.
    pub fn reload(&self, config: &Config) {
        if let Some(l) = config.listeners.iter().find(|l| l.address == self.address) {
            if l.tls != self.tls {
                log::warn!(
                    "listener {}: a change of `tls` needs a restart; the rest is applied",
                    self.address
                );
            }
            *self.live.borrow_mut() = Rc::new(LiveSettings::new(l, config, self.tls));
        }
    }
}

fn session_config(l: &ListenerConfig, config: &Config, tls: ListenerTls) -> ServerConfig {
    ServerConfig {
        hostname: config.server.hostname.clone(),
        max_message_bytes: l.max_message_bytes,
        max_recipients: l.max_recipients,
        max_errors: l.max_errors,
        starttls_available: tls == ListenerTls::Starttls,
        auth_enabled: l.auth != ListenerAuth::Off,
        auth_required: l.auth == ListenerAuth::Required,
        command_timeout: Duration::from_millis(l.command_timeout_ms),
        data_timeout: Duration::from_millis(l.data_timeout_ms),
        line_endings: match l.line_endings {
            crate::config::LineEndingsMode::Normalize => crate::smtp::data::LineEndings::Normalize,
            crate::config::LineEndingsMode::Strict => crate::smtp::data::LineEndings::Strict,
        },
    }
}

/// Binds every configured listener on this core and serves them until the stop request.
pub fn start(core: &Rc<ListenerCore>) -> Result<Vec<Rc<ListenerContext>>, String> {
    let config = core.config();
    let mut contexts = Vec::new();
    for l in &config.listeners {
        let socket = TcpListener::bind(l.address)
            .map_err(|e| format!("cannot listen on {}: {e}", l.address))?;
        let acceptor = match l.tls {
            ListenerTls::None => None,
            _ => core.node.tls.clone().map(TlsAcceptor::from),
        };
        let ctx = Rc::new(ListenerContext {
            core: core.clone(),
            address: l.address,
            tls: l.tls,
            live: RefCell::new(Rc::new(LiveSettings::new(l, &config, l.tls))),
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
                log::warn!("accept on {}: {e}", ctx.address);
                // Out of file descriptors and the like: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    log::debug!("listener {} closed", ctx.address);
}
