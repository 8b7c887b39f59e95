//! What every core shares with the signal thread and the others: stop and reload requests, the
//! current configuration (swapped only on reload, read by each core once per reload) with its DKIM
//! keys, the lock-free connection counters behind the total and per-client-IP limits, and the
//! message bytes held in memory by inbound sessions (`[server] max_message_bytes_in_flight`).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::config::overlay::{ApiChange, Dropped, Overlay, OverlayError};
use crate::dkim::DkimSigners;
use crate::transport_security::{ClientTls, anchor_files};

/// Buckets for per-IP connection counts: IPs hash into them, so a collision can only make a limit
/// stricter, never looser.
const IP_BUCKETS: usize = 1 << 16;

pub struct Control {
    stop: AtomicBool,
    reload_generation: AtomicU64,
    /// Only locked on reload and when a core picks up a new generation: never per message.
    config: Mutex<Arc<Config>>,
    /// The configuration file's own version (the embedded default when there is no file), under
    /// the API's changes.
    file_config: Mutex<Arc<Config>>,
    /// The API's changes kept across restarts (`config::overlay`); locked on the signal thread,
    /// at start and on the API's blocking-pool thread, never on a reactor.
    overlay: Mutex<Overlay>,
    /// The keys of `config`'s `[[dkim]]` entries, loaded by whoever publishes a configuration
    /// whose entries changed (the signal thread, start-up): reading key files never runs on a core.
    dkim: Mutex<Arc<DkimSigners>>,
    /// The outbound TLS configurations of `config`'s `[tls] trust_anchors`, loaded like `dkim`.
    client_tls: Mutex<Arc<ClientTls>>,
    pub config_path: Option<PathBuf>,
    connections_total: AtomicU32,
    connections_by_ip: Box<[AtomicU32]>,
    hasher: std::collections::hash_map::RandomState,
    /// Message body octets held in memory by the inbound sessions of all cores, from the first
    /// octet received until the message is spooled or refused (see `MessageBytesHeld`).
    message_bytes_in_flight: AtomicU64,
    /// Cores that finished starting and serve.
    pub cores_ready: AtomicU32,
    pub core_count: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn log_dropped(dropped: &[Dropped]) {
    for d in dropped {
        log::warn!(
            "API change of {}/{} dropped: {}",
            d.section,
            d.name,
            d.reason
        );
    }
}

/// Why a connection is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    TooManyTotal,
    TooManyFromIp,
}

/// Holds one connection's place in the counters; released on drop.
pub struct ConnectionSlot {
    control: Arc<Control>,
    bucket: usize,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.control
            .connections_total
            .fetch_sub(1, Ordering::Relaxed);
        self.control.connections_by_ip[self.bucket].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One session's share of `message_bytes_in_flight`; given back on drop, so no error path of a
/// session can leak it.
pub struct MessageBytesHeld {
    control: Arc<Control>,
    bytes: u64,
}

impl MessageBytesHeld {
    /// The octets this session holds now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes this session's share `bytes`. Shrinking always succeeds; growing succeeds only if
    /// the total of all sessions stays within `limit`, else nothing changes and it returns false.
    pub fn hold(&mut self, bytes: u64, limit: u64) -> bool {
        let counter = &self.control.message_bytes_in_flight;
        if bytes <= self.bytes {
            counter.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
            self.bytes = bytes;
            return true;
        }
        let more = bytes - self.bytes;
        let grown = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
            total.checked_add(more).filter(|&next| next <= limit)
        });
        if grown.is_ok() {
            self.bytes = bytes;
        }
        grown.is_ok()
    }
}

impl Drop for MessageBytesHeld {
    fn drop(&mut self) {
        self.control
            .message_bytes_in_flight
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Control {
    pub fn new(config: Arc<Config>, config_path: Option<PathBuf>) -> Arc<Control> {
        let core_count = config.core_count() as u32;
        Arc::new(Control {
            stop: AtomicBool::new(false),
            reload_generation: AtomicU64::new(0),
            dkim: Mutex::new(Arc::new(DkimSigners::load_logged(&config.dkim))),
            client_tls: Mutex::new(Arc::new(ClientTls::load_logged(anchor_files(&config)))),
            file_config: Mutex::new(config.clone()),
            overlay: Mutex::new(Overlay::default()),
            config: Mutex::new(config),
            config_path,
            connections_total: AtomicU32::new(0),
            connections_by_ip: (0..IP_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            hasher: Default::default(),
            message_bytes_in_flight: AtomicU64::new(0),
            cores_ready: AtomicU32::new(0),
            core_count,
        })
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Publishes a new configuration; each core applies it at its next reload check.
    pub fn publish(&self, config: Arc<Config>) {
        // Keys are read only when the entries changed (API edits never touch them).
        let signers = self.dkim_signers();
        if !signers.loaded_from(&config.dkim) {
            let loaded = Arc::new(DkimSigners::load_logged(&config.dkim));
            if let Ok(mut dkim) = self.dkim.lock() {
                *dkim = loaded;
            }
        }
        if !self.client_tls().loaded_from(anchor_files(&config)) {
            *lock(&self.client_tls) = Arc::new(ClientTls::load_logged(anchor_files(&config)));
        }
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
        self.reload_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the API's kept changes from the spool directory and lays them over the file's
    /// configuration (at start, before the cores run). Blocking.
    pub fn load_api_changes(&self) -> Result<(), OverlayError> {
        let file = self.file_config();
        let mut overlay = Overlay::open(std::path::Path::new(&file.server.spool_dir))?;
        if overlay.changes().is_empty() {
            *lock(&self.overlay) = overlay;
            return Ok(());
        }
        let (effective, dropped) = overlay.apply(&file);
        log_dropped(&dropped);
        log::info!(
            "{} configuration changes made through the API applied over the file",
            overlay.changes().len()
        );
        *lock(&self.overlay) = overlay;
        self.publish(Arc::new(effective));
        Ok(())
    }

    /// A reload from the file: the API's changes are laid over it again, except those whose entry
    /// the file changed since (the file wins; each is logged).
    pub fn publish_file(&self, file: Config) -> Arc<Config> {
        let mut overlay = lock(&self.overlay);
        let (effective, dropped) = overlay.apply(&file);
        log_dropped(&dropped);
        *lock(&self.file_config) = Arc::new(file);
        let effective = Arc::new(effective);
        self.publish(effective.clone());
        effective
    }

    /// An API change of one entry: kept durably first (blocking), then published.
    pub fn publish_api_change(
        &self,
        section: &str,
        name: &str,
        next: Arc<Config>,
    ) -> Result<(), OverlayError> {
        let file = self.file_config();
        let change = ApiChange {
            section: section.to_string(),
            name: name.to_string(),
            entry: crate::config::entries::entry_json(&next, section, name),
            file_entry: crate::config::entries::entry_json(&file, section, name),
            at: crate::clock::now_rfc3339(),
        };
        lock(&self.overlay).record(change)?;
        self.publish(next);
        Ok(())
    }

    /// The API's changes in force, oldest first.
    pub fn api_changes(&self) -> Vec<ApiChange> {
        lock(&self.overlay).changes().to_vec()
    }

    fn file_config(&self) -> Arc<Config> {
        lock(&self.file_config).clone()
    }

    /// The DKIM signers of the published configuration.
    pub fn dkim_signers(&self) -> Arc<DkimSigners> {
        match self.dkim.lock() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The outbound TLS configurations of the published configuration.
    pub fn client_tls(&self) -> Arc<ClientTls> {
        lock(&self.client_tls).clone()
    }

    pub fn generation(&self) -> u64 {
        self.reload_generation.load(Ordering::Acquire)
    }

    pub fn config(&self) -> Arc<Config> {
        match self.config.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn all_cores_ready(&self) -> bool {
        self.cores_ready.load(Ordering::Acquire) >= self.core_count
    }

    fn bucket(&self, ip: IpAddr) -> usize {
        (self.hasher.hash_one(ip) as usize) % IP_BUCKETS
    }

    /// Takes a place for a new connection from `ip`, or says which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: u32,
        max_per_ip: u32,
    ) -> Result<ConnectionSlot, ConnectionRefusal> {
        let bucket = self.bucket(ip);
        let total = self.connections_total.fetch_add(1, Ordering::Relaxed);
        let from_ip = self.connections_by_ip[bucket].fetch_add(1, Ordering::Relaxed);
        let slot = ConnectionSlot {
            control: self.clone(),
            bucket,
        };
        if total >= max_total {
            Err(ConnectionRefusal::TooManyTotal)
        } else if from_ip >= max_per_ip {
            Err(ConnectionRefusal::TooManyFromIp)
        } else {
            Ok(slot)
        }
    }

    pub fn connections(&self) -> u32 {
        self.connections_total.load(Ordering::Relaxed)
    }

    /// A new session's share of the message bytes in flight, holding nothing yet.
    pub fn hold_message_bytes(self: &Arc<Self>) -> MessageBytesHeld {
        MessageBytesHeld {
            control: self.clone(),
            bytes: 0,
        }
    }

    /// Message body octets held in memory by all inbound sessions now.
    pub fn message_bytes_in_flight(&self) -> u64 {
        self.message_bytes_in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_limits() {
        let control = Control::new(Arc::new(Config::embedded_default()), None);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = control.admit(a, 3, 2).unwrap();
        let _s2 = control.admit(a, 3, 2).unwrap();
        assert_eq!(
            control.admit(a, 3, 2).err(),
            Some(ConnectionRefusal::TooManyFromIp)
        );
        let _s3 = control.admit(b, 3, 2).unwrap();
        assert_eq!(
            control.admit(b, 3, 2).err(),
            Some(ConnectionRefusal::TooManyTotal)
        );
        drop(s1);
        assert!(control.admit(a, 4, 2).is_ok());
        assert_eq!(
            control.connections(),
            2,
            "the two held slots; refused ones released theirs"
        );
    }

    #[test]
    fn message_bytes_stay_within_the_limit_and_come_back_on_drop() {
        let control = Control::new(Arc::new(Config::embedded_default()), None);
        let mut a = control.hold_message_bytes();
        let mut b = control.hold_message_bytes();
        assert!(a.hold(600, 1000));
        assert!(!b.hold(600, 1000), "600 + 600 is over the limit");
        assert_eq!(b.bytes(), 0, "a refused growth changes nothing");
        assert!(b.hold(400, 1000), "exactly the limit fits");
        assert_eq!(control.message_bytes_in_flight(), 1000);
        assert!(!a.hold(601, 1000));
        assert!(a.hold(100, 1000), "shrinking always succeeds");
        assert_eq!(control.message_bytes_in_flight(), 500);
        assert!(
            a.hold(100, 10),
            "shrinking or keeping succeeds even over a lowered limit"
        );
        drop(b);
        assert_eq!(control.message_bytes_in_flight(), 100);
        drop(a);
        assert_eq!(control.message_bytes_in_flight(), 0);
    }
}
