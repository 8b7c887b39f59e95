//! What a reload cannot apply to a running daemon: the keys whose change needs a restart. A reload
//! applies every other key (each service picks up the new configuration: listeners for sessions
//! that start from then on, delivery for connections opened from then on, the API per request,
//! the accounting log at once). `volley check --against` and the reload log line name these.

use super::Config;

/// The keys that differ between `running` and `next` and take effect only after a restart.
pub fn keys_needing_restart(running: &Config, next: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut differs = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_string());
        }
    };
    differs("server.cores", running.core_count() != next.core_count());
    differs(
        "server.spool_dir",
        running.server.spool_dir != next.server.spool_dir,
    );
    differs("spool", running.spool != next.spool);
    // Each executor's blocking pool is made with it.
    differs(
        "server.blocking_threads_per_core",
        running.server.blocking_threads_per_core != next.server.blocking_threads_per_core,
    );
    differs(
        "server.pin_blocking_threads",
        running.server.pin_blocking_threads != next.server.pin_blocking_threads,
    );
    // Set in the allocator once, before the cores start.
    differs(
        "server.allocator_purge_delay_ms",
        running.server.allocator_purge_delay_ms != next.server.allocator_purge_delay_ms,
    );
    differs("api.address", running.api.address != next.api.address);
    // Sockets are bound at start: a listener added, removed or moved needs a restart.
    let addresses = |c: &Config| c.listeners.iter().map(|l| l.address).collect::<Vec<_>>();
    differs("listener.address", addresses(running) != addresses(next));
    // The TLS server configuration (certificate, key) is built once at start.
    let tls = |c: &Config| {
        c.tls
            .as_ref()
            .map(|t| (t.certificate.clone(), t.private_key.clone()))
    };
    differs("tls", tls(running) != tls(next));
    let modes = |c: &Config| c.listeners.iter().map(|l| l.tls).collect::<Vec<_>>();
    differs("listener.tls", modes(running) != modes(next));
    // The Redis link and this node's registry name are set up once at start.
    let cluster = |c: &Config| {
        c.cluster
            .as_ref()
            .map(|k| (k.node.clone(), k.redis.clone()))
    };
    differs("cluster", cluster(running) != cluster(next));
    // One sender thread per webhook and the journal are set up at start; a reload changes the
    // settings of the webhooks that exist (url, events, batch_max_events, secret, timeout_ms).
    let webhooks = |c: &Config| {
        let mut names: Vec<String> = c.webhooks.iter().map(|w| w.name().to_string()).collect();
        names.sort();
        names
    };
    differs("webhook", webhooks(running) != webhooks(next));
    differs(
        "webhook_journal",
        running.webhook_journal != next.webhook_journal,
    );
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "[[listener]]\naddress = \"127.0.0.1:2525\"\nrelay_networks = [\"127.0.0.0/8\"]\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn only_start_time_keys_are_named() {
        let running = config("");
        assert!(keys_needing_restart(&running, &running).is_empty());
        let mut next = running.clone();
        next.server.spool_dir = "/elsewhere".into();
        next.api.address = "127.0.0.1:9999".parse().unwrap();
        next.listeners[0].relay_networks.clear();
        next.listeners[0].max_recipients = 7;
        assert_eq!(
            keys_needing_restart(&running, &next),
            ["server.spool_dir", "api.address"]
        );
        let mut moved = running.clone();
        moved.listeners[0].address = "127.0.0.1:2626".parse().unwrap();
        assert_eq!(keys_needing_restart(&running, &moved), ["listener.address"]);
    }

    #[test]
    fn webhooks_added_or_removed_need_a_restart_their_settings_do_not() {
        let hook =
            |name: &str| format!("[[webhook]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/\"\n");
        let running = config(&(hook("a") + &hook("b")));
        let mut next = running.clone();
        next.webhooks[0].url = "https://elsewhere.example/".into();
        next.webhooks[0].secret = "new".into();
        next.webhooks.swap(0, 1);
        assert!(keys_needing_restart(&running, &next).is_empty());
        next.webhooks.pop();
        assert_eq!(keys_needing_restart(&running, &next), ["webhook"]);
        let mut bigger = running.clone();
        bigger.webhook_journal.max_bytes *= 2;
        assert_eq!(keys_needing_restart(&running, &bigger), ["webhook_journal"]);
    }

    #[test]
    fn blocking_pool_and_lazy_state_sync_need_a_restart() {
        let running = config("");
        let mut next = running.clone();
        next.server.blocking_threads_per_core = 3;
        next.server.pin_blocking_threads = true;
        assert_eq!(
            keys_needing_restart(&running, &next),
            [
                "server.blocking_threads_per_core",
                "server.pin_blocking_threads"
            ]
        );
        let mut next = running.clone();
        next.spool.lazy_state_sync_ms = 0;
        assert_eq!(keys_needing_restart(&running, &next), ["spool"]);
        let mut next = running.clone();
        next.server.allocator_purge_delay_ms = 0;
        assert_eq!(
            keys_needing_restart(&running, &next),
            ["server.allocator_purge_delay_ms"]
        );
    }
}
