//! Against a real `redis-server` (scripts/test-deps.sh installs it), started on a free loopback
//! port for each test and stopped with it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::link::{Link, LinkError, LinkSettings};
use super::quota::{self, Exhausted, LeaseAsk, QuotaKeys};
use super::registry::{self, NodeStatus};

/// A private redis-server, killed on drop.
pub(crate) struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test-deps.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect")
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ask(per_hour: Option<u32>, credits: u64, want: u32, nodes: u32) -> LeaseAsk {
    LeaseAsk {
        per_hour,
        per_day: None,
        credits_bought: credits,
        want,
        live_nodes: nodes,
    }
}

#[test]
fn leases_from_many_nodes_never_add_up_past_the_limit() {
    let redis = RedisServer::start();
    let keys = QuotaKeys::new("acme", 10, 0);
    // Six holders (3 nodes x 2 cores) lease in turn until nothing is left.
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = redis.url();
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                let (mut plan, mut credits) = (0u64, 0u64);
                loop {
                    let g = quota::lease(&mut c, &keys, ask(Some(1000), 50, 100, 3)).unwrap();
                    if g.plan == 0 && g.credits == 0 {
                        assert_eq!(g.exhausted, Some(Exhausted::Hour));
                        return (plan, credits);
                    }
                    assert!(g.plan <= 100 && g.credits <= 100);
                    plan += u64::from(g.plan);
                    credits += u64::from(g.credits);
                }
            })
        })
        .collect();
    let (plan, credits) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |(p, c), (dp, dc)| (p + dp, c + dc));
    assert_eq!(plan, 1000, "the plan, exactly");
    assert_eq!(credits, 50, "the credits, exactly");
    let usage = quota::usage(&mut redis.connection(), &keys).unwrap();
    assert_eq!(
        (usage.hour, usage.day, usage.credits_spent),
        (1000, 1000, 50)
    );
    // A top-up is seen by the next lease at once.
    let mut c = redis.connection();
    assert_eq!(quota::add_credits(&mut c, &keys, 5).unwrap(), 5);
    let g = quota::lease(&mut c, &keys, ask(Some(1000), 50, 100, 1)).unwrap();
    assert_eq!(g.credits, 2, "5 left / (2 x 1 node)");
}

#[test]
fn a_lease_is_a_share_of_the_room_and_shrinks_with_it() {
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let keys = QuotaKeys::new("acme", 11, 0);
    let g = quota::lease(&mut c, &keys, ask(Some(1000), 0, 400, 2)).unwrap();
    assert_eq!(g.plan, 250, "room 1000 / (2 x 2 nodes)");
    let g = quota::lease(&mut c, &keys, ask(Some(1000), 0, 400, 2)).unwrap();
    assert_eq!(g.plan, 187, "room 750 / 4");
    quota::give_back(&mut c, &keys, 100, 0).unwrap();
    let usage = quota::usage(&mut c, &keys).unwrap();
    assert_eq!((usage.hour, usage.day), (337, 337));
    // A day limit smaller than the hour's room rules.
    let keys = QuotaKeys::new("acme", 12, 1);
    let day_only = LeaseAsk {
        per_day: Some(10),
        ..ask(Some(1000), 0, 400, 1)
    };
    let g = quota::lease(&mut c, &keys, day_only).unwrap();
    assert_eq!(g.plan, 5);
    // Giving back more than was counted stops at zero.
    quota::give_back(&mut c, &keys, 50, 50).unwrap();
    assert_eq!(
        quota::usage(&mut c, &keys).unwrap(),
        quota::Usage::default()
    );
}

#[test]
fn usage_counted_during_an_outage_is_added_without_a_limit() {
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let keys = QuotaKeys::new("acme", 13, 0);
    quota::add_usage(&mut c, &keys, 7, 2).unwrap();
    let usage = quota::usage(&mut c, &keys).unwrap();
    assert_eq!((usage.hour, usage.day, usage.credits_spent), (7, 7, 2));
    let g = quota::lease(&mut c, &keys, ask(Some(5), 0, 10, 1)).unwrap();
    assert_eq!((g.plan, g.exhausted), (0, Some(Exhausted::Hour)));
}

#[test]
fn heartbeats_list_nodes_and_count_the_live_ones() {
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let health = super::Health::default();
    let now = 1_800_000_000_000;
    let status = NodeStatus {
        queued_recipients: 12,
        ..NodeStatus::default()
    };
    registry::heartbeat(&mut c, &health, "old", &status, 1000, now - 10_000).unwrap();
    registry::heartbeat(&mut c, &health, "mta1", &status, 1000, now).unwrap();
    registry::heartbeat(&mut c, &health, "mta2", &status, 1000, now - 500).unwrap();
    assert_eq!(health.live_nodes(), 2, "old missed more than 3 heartbeats");
    let nodes = registry::list(&mut c, 1000, now).unwrap();
    let names: Vec<_> = nodes.iter().map(|n| (n.node.as_str(), n.live)).collect();
    assert_eq!(names, [("mta1", true), ("mta2", true), ("old", false)]);
    assert_eq!(nodes[0].status.as_ref().unwrap().queued_recipients, 12);
}

fn link_to(redis: &RedisServer) -> Link {
    Link::start(
        LinkSettings {
            url: redis.url(),
            timeout: Duration::from_millis(300),
            period: Duration::from_millis(100),
        },
        Box::new(|c, health| {
            registry::heartbeat(
                c,
                health,
                "self",
                &NodeStatus::default(),
                100,
                crate::clock::unix_ms(),
            )
        }),
    )
    .unwrap()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_core_awaits_redis_through_the_link_thread_and_survives_an_outage() {
    let mut redis = RedisServer::start();
    let link = link_to(&redis);
    wait_for("the link to come up", || link.health.is_up());
    let epoch = link.health.epoch();
    let call = |link: &Link| {
        let link = link.clone();
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async move {
                link.call(|c| redis::cmd("INCR").arg("n").query::<u64>(c))
                    .await
            })
    };
    assert_eq!(call(&link), Ok(1), "the answer wakes the core's task");
    let trips = link.health.round_trips();
    assert!(trips >= 1);
    redis.stop();
    // The first call after the stop finds the connection broken, the next ones fail at once.
    let _ = call(&link);
    wait_for("the link to notice", || !link.health.is_up());
    let started = Instant::now();
    assert_eq!(call(&link), Err(LinkError::Down));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "no wait on a dead server"
    );
    assert!(link.health.outages() >= 1);
    redis.restart();
    wait_for("the link to come back", || link.health.is_up());
    assert!(link.health.epoch() > epoch, "the epoch moves on reconnect");
    assert_eq!(call(&link), Ok(1), "a fresh server: the counter restarts");
    wait_for("a heartbeat", || {
        let mut c = redis.connection();
        registry::list(&mut c, 100, crate::clock::unix_ms())
            .map(|n| n.iter().any(|e| e.node == "self" && e.live))
            .unwrap_or(false)
    });
}
