//! One suite drives intake with each origin (SMTP, API, notice) through a real spool, router and
//! placement on one core, and checks the same steps happened in the same way for each: the
//! customer, the header lines, the charge, the durable record, the reception events, the handoff.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::*;
use crate::accounting::EventLog;
use crate::config::Config;
use crate::envelope::{MessageTags, Recipient, RouteChoice};
use crate::limits::SendingLimits;
use crate::metrics::Metrics;
use crate::placement::VmtaBoard;
use crate::router::{CoreMessage, Handoff, RouterSetup};
use crate::shard::{Control, Node};
use crate::spool::{SegmentReader, Spool, SpoolConfig};

const CONFIG: &str = r#"
[server]
hostname = "mta.intake.test"

[[listener]]
address = "127.0.0.1:2525"
relay_networks = ["127.0.0.0/8"]

[[customer]]
name = "acme"
max_messages_per_hour = 2
"#;

/// One core: its shard and placement, and the handoffs the router delivered to it.
struct Core {
    placement: Rc<Placement>,
    handoffs: Rc<RefCell<Vec<Handoff>>>,
    events: Arc<EventLog>,
}

/// The configuration of the node that takes mail handed over by its peers on 127.0.0.0/30.
const PEER_CONFIG: &str = r#"
[server]
hostname = "mta-b.intake.test"

[[listener]]
address = "127.0.0.1:2525"
relay_networks = ["127.0.0.0/8"]

[[customer]]
name = "acme"
max_messages_per_hour = 2

[cluster]
node = "mta-b"
redis = "redis://127.0.0.1:1/0"
peer_networks = ["127.0.0.0/30"]
"#;

async fn core_with(dir: &std::path::Path, config: &str) -> Core {
    let config = Arc::new(Config::parse(config).expect("config"));
    let events = EventLog::open("").expect("event log");
    let node = Node {
        control: Control::new(config, None),
        cores: 1,
        metrics: Arc::new(Metrics::new(1)),
        events: events.clone(),
        tls: None,
        router: RouterSetup::new(1),
        limits: Arc::new(SendingLimits::in_memory()),
        cluster: None,
        suppressions: Arc::new(crate::suppression::SuppressionList::in_memory()),
        drain: Arc::new(crate::shard::Drain::in_memory()),
        xfers_seen: Arc::new(crate::shard::XferMemory::default()),
        tls_rpt: Arc::new(crate::transport_security::tls_rpt::Recorder::new(1)),
    };
    let mut spool_config = SpoolConfig::new(dir, 0);
    spool_config.fsync = false;
    spool_config.segment_bytes = 1 << 20;
    let (spool, _) = Spool::open(spool_config).expect("spool");
    let shard = Rc::new(Shard::new(
        0,
        node.clone(),
        spool,
        SegmentReader::new(dir.to_path_buf()),
    ));
    let handoffs = Rc::new(RefCell::new(Vec::new()));
    let seen = handoffs.clone();
    let router = node
        .router
        .connect(
            0,
            Rc::new(move |message| {
                if let CoreMessage::Deliver(handoff) = message {
                    seen.borrow_mut().push(handoff);
                }
            }),
        )
        .await
        .expect("router");
    shard.connect_router(router);
    Core {
        placement: Rc::new(Placement::new(shard, Arc::new(VmtaBoard::default()))),
        handoffs,
        events,
    }
}

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope {
        sender: "alice@src.test".into(),
        recipients: recipients.iter().map(|r| Recipient::new(*r)).collect(),
        ..Envelope::default()
    }
}

const BODY: &[u8] =
    b"From: alice@src.test\r\nX-Volley-Customer: acme\r\nSubject: hi\r\n\r\nHello.\r\n";

/// The stored message (header lines and body as spooled) and its envelope, read back.
fn stored(core: &Core, handoff: &Handoff) -> (Envelope, String) {
    let message = core
        .placement
        .bodies
        .message(handoff.id, handoff.record)
        .expect("the record reads back");
    let body = core.placement.bodies.body(message.body).expect("body");
    (
        message.envelope.to_envelope(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn run(test: impl AsyncFnOnce(Core)) {
    run_with(CONFIG, test)
}

fn run_with(config: &str, test: impl AsyncFnOnce(Core)) {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async {
            let dir = tempfile::tempdir().expect("dir");
            test(core_with(dir.path(), config).await).await;
        });
}

#[test]
fn every_origin_is_spooled_routed_and_accounted_the_same_way() {
    run(async |core| {
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let origins = [
            Origin::Smtp {
                helo: "client.test",
                ip,
                protocol: "ESMTP",
                authenticated: None,
                relay_trusted: true,
            },
            Origin::Api {
                peer: ip,
                customer: None,
                requested: Default::default(),
            },
            Origin::Notice { reserve: false },
        ];
        for (n, origin) in origins.into_iter().enumerate() {
            let recipient = format!("r{n}@Dest.Test");
            let accepted = accept(
                &core.placement,
                origin,
                envelope(&[&recipient]),
                BODY.to_vec(),
            )
            .await
            .expect("accepted");
            assert_eq!(accepted.recipients, 1);
            let handoff = core.handoffs.borrow().last().cloned().expect("routed");
            assert_eq!(handoff.id, accepted.id);
            assert_eq!(&*handoff.domain, "dest.test", "one queue form");
            let (stored_envelope, text) = stored(&core, &handoff);
            assert!(text.starts_with("Received: "), "{text}");
            assert!(text.contains("by mta.intake.test (Volley) with"), "{text}");
            assert!(
                !text.contains("X-Volley-Customer"),
                "always removed: {text}"
            );
            assert!(stored_envelope.received_at_s > 0);
            // Relay and API name the customer by the header; a notice keeps its envelope's (none).
            let expected = if n < 2 { "acme" } else { "" };
            assert_eq!(stored_envelope.customer, expected, "origin {n}");
        }
        // One reception event per recipient, for every origin.
        core.placement.accounting.flush_now();
        let events = core.events.after(0, 100);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(
            events
                .iter()
                .all(|(_, e)| e.contains("\"type\":\"reception\""))
        );
        // Relay and API were charged to acme's plan; the notice was not.
        let (hour, _, _) = core.placement.limits.usage("acme", crate::clock::unix_s());
        assert_eq!(hour, 2);
    });
}

#[test]
fn the_customer_comes_only_from_whom_the_origin_trusts() {
    run(async |core| {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let untrusted = Origin::Smtp {
            helo: "x",
            ip,
            protocol: "ESMTP",
            authenticated: None,
            relay_trusted: false,
        };
        accept(
            &core.placement,
            untrusted,
            envelope(&["a@d.test"]),
            BODY.to_vec(),
        )
        .await
        .expect("accepted");
        let authenticated = Origin::Smtp {
            helo: "x",
            ip,
            protocol: "ESMTPSA",
            authenticated: Some("other"),
            relay_trusted: false,
        };
        accept(
            &core.placement,
            authenticated,
            envelope(&["b@d.test"]),
            b"Subject: s\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .expect("accepted");
        let api = Origin::Api {
            peer: ip,
            customer: Some("acme".into()),
            requested: Default::default(),
        };
        accept(
            &core.placement,
            api,
            envelope(&["c@d.test"]),
            b"X-Volley-Customer: nobody\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .expect("accepted");
        let handoffs = core.handoffs.borrow().clone();
        let customers: Vec<String> = handoffs
            .iter()
            .map(|h| stored(&core, h).0.customer)
            .collect();
        assert_eq!(customers, ["", "other", "acme"]);
        // Every way in adds the Message-ID the client left out (RFC 6409 8, and Postfix's
        // cleanup for relay mail).
        let (_, submitted) = stored(&core, &handoffs[1]);
        assert!(
            submitted.contains("(authenticated as other)"),
            "{submitted}"
        );
        assert!(submitted.contains("\r\nMessage-ID: <"), "{submitted}");
        let (_, relayed) = stored(&core, &handoffs[0]);
        assert!(relayed.contains("\r\nMessage-ID: <"), "{relayed}");
    });
}

#[test]
fn a_plan_used_up_refuses_with_the_same_reply_whichever_way_in() {
    run(async |core| {
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let api = || Origin::Api {
            peer: ip,
            customer: Some("acme".into()),
            requested: Default::default(),
        };
        for _ in 0..2 {
            accept(
                &core.placement,
                api(),
                envelope(&["a@d.test"]),
                BODY.to_vec(),
            )
            .await
            .expect("within the plan");
        }
        let refused = accept(
            &core.placement,
            api(),
            envelope(&["a@d.test"]),
            BODY.to_vec(),
        )
        .await
        .expect_err("over the hourly limit");
        assert_eq!(refused.http_status(), 429);
        let relay = Origin::Smtp {
            helo: "x",
            ip,
            protocol: "ESMTP",
            authenticated: None,
            relay_trusted: true,
        };
        let refused = accept(
            &core.placement,
            relay,
            envelope(&["a@d.test"]),
            BODY.to_vec(),
        )
        .await
        .expect_err("over the hourly limit");
        assert!(
            refused
                .smtp_reply()
                .to_string()
                .starts_with("451 4.7.1 Hourly sending limit of 2")
        );
        // Nothing refused was spooled or routed; a notice still goes through (never charged).
        assert_eq!(core.handoffs.borrow().len(), 2);
        let mut dsn = envelope(&["alice@src.test"]);
        dsn.sender = String::new();
        dsn.customer = "acme".into();
        accept(
            &core.placement,
            Origin::Notice { reserve: false },
            dsn,
            b"Subject: dsn\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .expect("a notice is not charged");
        assert_eq!(core.handoffs.borrow().len(), 3);
    });
}

fn from_peer(ip: &str) -> Origin<'static> {
    Origin::Smtp {
        helo: "mta-a.intake.test",
        ip: ip.parse().unwrap(),
        protocol: "ESMTP",
        authenticated: None,
        relay_trusted: true,
    }
}

fn handed_over(xfer: &Xfer) -> Vec<u8> {
    [
        xfer.header_line().as_bytes(),
        b"From: alice@src.test\r\nSubject: hi\r\n\r\nHello.\r\n",
    ]
    .concat()
}

fn sample_xfer(received_s: u64) -> Xfer {
    Xfer {
        node: "mta-a".into(),
        id: "00000000002A-00".into(),
        customer: "acme".into(),
        received_s,
        attempts: 4,
        campaign: String::new(),
    }
}

#[test]
fn a_hand_over_from_a_peer_keeps_customer_reception_time_and_attempts() {
    run_with(PEER_CONFIG, async |core| {
        let first_received_s = crate::clock::unix_s() - 3_600;
        let xfer = sample_xfer(first_received_s);
        for _ in 0..3 {
            // More than acme's hourly plan of 2: a hand-over is not charged again.
            accept(
                &core.placement,
                from_peer("127.0.0.1"),
                envelope(&["a@d.test", "b@e.test"]),
                handed_over(&xfer),
            )
            .await
            .expect("taken from a peer");
        }
        let (hour, _, _) = core.placement.limits.usage("acme", crate::clock::unix_s());
        assert_eq!(hour, 0, "charged on the first node only");
        let handoffs = core.handoffs.borrow().clone();
        assert_eq!(handoffs.len(), 6, "one per domain per message");
        assert!(
            handoffs.iter().all(|h| h.recipients[0].1 == 4),
            "the attempts go to the queues: {handoffs:?}"
        );
        let (stored_envelope, text) = stored(&core, &handoffs[0]);
        assert_eq!(stored_envelope.customer, "acme");
        assert_eq!(stored_envelope.received_at_s, first_received_s);
        assert!(!text.contains("X-Volley-Xfer"), "taken off: {text}");
        assert!(
            text.starts_with("Received: from mta-a.intake.test"),
            "{text}"
        );
        // The attempts are in the spool too (a restart keeps them): one state per recipient.
        assert_eq!(core.placement.spool.stats().state_records, 6);

        core.placement.accounting.flush_now();
        let events: Vec<serde_json::Value> = core
            .events
            .after(0, 100)
            .into_iter()
            .map(|(_, line)| serde_json::from_str(&line).unwrap())
            .collect();
        assert_eq!(events.len(), 6, "{events:?}");
        for e in &events {
            assert_eq!(e["type"], "xfer_in", "instead of reception: {e}");
            assert_eq!(e["node"], "mta-a");
            assert_eq!(e["xfer_id"], "00000000002A-00");
            assert_eq!(e["customer"], "acme");
            assert_eq!(e["attempt"], 4);
            assert_eq!(e["source_ip"], "127.0.0.1");
            assert!(e["queue_ms"].as_u64().unwrap() >= 3_600_000, "{e}");
        }
        let counters = core.placement.counters();
        assert_eq!(counters.xfer_in.load(Ordering::Relaxed), 6);
        assert_eq!(
            counters.xfer_duplicates.load(Ordering::Relaxed),
            4,
            "the second and third hand-over of each recipient"
        );
        assert_eq!(counters.messages_received.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_reception_time_in_the_future_is_taken_as_now() {
    run_with(PEER_CONFIG, async |core| {
        let xfer = Xfer {
            attempts: 0,
            ..sample_xfer(u64::MAX)
        };
        accept(
            &core.placement,
            from_peer("127.0.0.2"),
            envelope(&["a@d.test"]),
            handed_over(&xfer),
        )
        .await
        .expect("taken");
        let handoff = core.handoffs.borrow()[0].clone();
        let (stored_envelope, _) = stored(&core, &handoff);
        assert!(stored_envelope.received_at_s <= crate::clock::unix_s());
        assert_eq!(
            core.placement.spool.stats().state_records,
            0,
            "no attempt to keep"
        );
    });
}

#[test]
fn a_hand_over_header_from_anyone_else_is_refused() {
    run_with(PEER_CONFIG, async |core| {
        let xfer = sample_xfer(1_790_000_000);
        let untrusted = accept(
            &core.placement,
            from_peer("127.0.0.9"),
            envelope(&["a@d.test"]),
            handed_over(&xfer),
        )
        .await
        .expect_err("outside peer_networks");
        assert!(
            untrusted
                .smtp_reply()
                .to_string()
                .starts_with("550 5.7.1 X-Volley-Xfer"),
            "{untrusted}"
        );
        let api = accept(
            &core.placement,
            Origin::Api {
                peer: "127.0.0.1".parse().unwrap(),
                customer: None,
                requested: Default::default(),
            },
            envelope(&["a@d.test"]),
            handed_over(&xfer),
        )
        .await
        .expect_err("never by the API");
        assert_eq!(api.http_status(), 403);
        let malformed = accept(
            &core.placement,
            from_peer("127.0.0.1"),
            envelope(&["a@d.test"]),
            b"X-Volley-Xfer: node=mta-a\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .expect_err("malformed");
        assert!(malformed.smtp_reply().to_string().starts_with("550 5.6.0"));
        let twice = [xfer.header_line().as_bytes(), handed_over(&xfer).as_slice()].concat();
        accept(
            &core.placement,
            from_peer("127.0.0.1"),
            envelope(&["a@d.test"]),
            twice,
        )
        .await
        .expect_err("two headers");
        assert!(core.handoffs.borrow().is_empty(), "nothing spooled");
        let refused = core
            .placement
            .counters()
            .xfer_refused
            .load(Ordering::Relaxed);
        assert_eq!(refused, 4);
    });
    // Without [cluster] no client is a peer.
    run(async |core| {
        let refused = accept(
            &core.placement,
            from_peer("127.0.0.1"),
            envelope(&["a@d.test"]),
            handed_over(&sample_xfer(1_790_000_000)),
        )
        .await
        .expect_err("no peers");
        assert!(matches!(refused, Refusal::XferUntrusted));
    });
}

/// Two pools of one VMTA each; acme sends through `default`, beta through `p2`.
const ROUTE_CONFIG: &str = r#"
[server]
hostname = "mta.intake.test"

[[listener]]
address = "127.0.0.1:2525"
relay_networks = ["127.0.0.0/8"]

[[vmta]]
name = "v1"
source_ip = "127.0.0.2"
ehlo_hostname = "v1.intake.test"

[[vmta]]
name = "v2"
source_ip = "127.0.0.3"
ehlo_hostname = "v2.intake.test"

[[pool]]
name = "default"
vmtas = ["v1"]

[[pool]]
name = "p2"
vmtas = ["v2"]

[[customer]]
name = "acme"

[[customer]]
name = "beta"
pool = "p2"
"#;

fn relay(ip: &str) -> Origin<'static> {
    Origin::Smtp {
        helo: "client.test",
        ip: ip.parse().unwrap(),
        protocol: "ESMTP",
        authenticated: None,
        relay_trusted: true,
    }
}

/// The accounting events written so far, parsed.
fn events(core: &Core) -> Vec<serde_json::Value> {
    core.placement.accounting.flush_now();
    core.events
        .after(0, 1000)
        .iter()
        .map(|(_, line)| serde_json::from_str(line).expect("JSON"))
        .collect()
}

#[test]
fn a_chosen_pool_or_vmta_and_the_campaign_are_spooled_routed_and_taken_off() {
    run_with(ROUTE_CONFIG, async |core| {
        for (header, vmta, route) in [
            ("X-Volley-Pool: p2", "v2", RouteChoice::Pool("p2".into())),
            ("X-Volley-VMTA: v2", "v2", RouteChoice::Vmta("v2".into())),
        ] {
            let body = format!(
                "From: a@src.test\r\nMessage-ID: <m1@src.test>\r\n{header}\r\n\
                 X-Volley-Campaign: spring\u{7}\r\nSubject: hi\r\n\r\nHello.\r\n"
            );
            accept(
                &core.placement,
                relay("127.0.0.9"),
                envelope(&["a@d.test"]),
                body.into_bytes(),
            )
            .await
            .expect("a relay network may choose any pool or VMTA");
            let handoff = core.handoffs.borrow().last().cloned().expect("routed");
            assert_eq!(&*handoff.vmta, vmta, "{header}");
            let (stored_envelope, text) = stored(&core, &handoff);
            assert_eq!(
                stored_envelope.tags,
                MessageTags {
                    message_id: "m1@src.test".into(),
                    campaign: "spring".into(),
                    route: Some(route),
                }
            );
            assert!(!text.contains("X-Volley-"), "taken off: {text}");
            assert!(text.contains("Message-ID: <m1@src.test>"), "{text}");
        }
        // Without a choice, the customer's pool (none named: `default`).
        accept(
            &core.placement,
            relay("127.0.0.9"),
            envelope(&["b@d.test"]),
            b"Subject: plain\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .expect("accepted");
        assert_eq!(&*core.handoffs.borrow()[2].vmta, "v1");
        let receptions: Vec<_> = events(&core)
            .into_iter()
            .filter(|e| e["type"] == "reception")
            .collect();
        assert_eq!(receptions.len(), 3);
        for e in &receptions[..2] {
            assert_eq!(e["message_id"], "m1@src.test");
            assert_eq!(e["campaign"], "spring");
            assert_eq!(e["vmta"], "v2");
        }
        // A message without a Message-ID gets the one intake adds.
        assert_eq!(
            receptions[2]["message_id"],
            format!(
                "{}@mta.intake.test",
                receptions[2]["id"].as_str().unwrap_or("")
            )
        );
        assert_eq!(receptions[2]["campaign"], "");
    });
}

#[test]
fn an_auth_customer_chooses_only_within_its_own_pool() {
    run_with(ROUTE_CONFIG, async |core| {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let auth = |user| Origin::Smtp {
            helo: "x",
            ip,
            protocol: "ESMTPSA",
            authenticated: Some(user),
            relay_trusted: false,
        };
        let body = |header: &str| {
            format!("Message-ID: <x9@src.test>\r\nX-Volley-Campaign: c1\r\n{header}\r\n\r\nx\r\n")
                .into_bytes()
        };
        // beta's pool is p2: p2 and v2 are its own.
        for header in ["X-Volley-Pool: p2", "X-Volley-VMTA: v2"] {
            accept(
                &core.placement,
                auth("beta"),
                envelope(&["a@d.test"]),
                body(header),
            )
            .await
            .expect("its own pool");
        }
        assert_eq!(core.handoffs.borrow().len(), 2);
        // acme's pool is default: p2 and v2 are not its own, and unknown names are not told apart.
        for header in [
            "X-Volley-Pool: p2",
            "X-Volley-VMTA: v2",
            "X-Volley-Pool: nope",
        ] {
            let refused = accept(
                &core.placement,
                auth("acme"),
                envelope(&["r@d.test"]),
                body(header),
            )
            .await
            .expect_err("a foreign pool");
            let reply = refused.smtp_reply().to_string();
            assert!(reply.starts_with("550 5.7.1 X-Volley-"), "{reply}");
            assert!(
                reply.contains("is not in the pool of customer acme"),
                "{reply}"
            );
        }
        // Not a relay network, not authenticated: no choice at all.
        let refused = accept(
            &core.placement,
            Origin::Smtp {
                helo: "x",
                ip,
                protocol: "ESMTP",
                authenticated: None,
                relay_trusted: false,
            },
            envelope(&["r@d.test"]),
            body("X-Volley-VMTA: v1"),
        )
        .await
        .expect_err("untrusted");
        assert!(
            refused
                .smtp_reply()
                .to_string()
                .starts_with("550 5.7.1 X-Volley-VMTA is only")
        );
        // Both at once, and an unknown name from a relay network: the message is wrong.
        for header in [
            "X-Volley-Pool: p2\r\nX-Volley-VMTA: v2",
            "X-Volley-Pool: nope",
        ] {
            let refused = accept(
                &core.placement,
                relay("127.0.0.9"),
                envelope(&["r@d.test"]),
                body(header),
            )
            .await
            .expect_err("refused");
            assert!(
                refused
                    .smtp_reply()
                    .to_string()
                    .starts_with("550 5.6.0 X-Volley-Pool")
            );
        }
        // Nothing refused was routed; each refusal is a rejection event with the message's tags.
        assert_eq!(core.handoffs.borrow().len(), 2);
        let rejections: Vec<_> = events(&core)
            .into_iter()
            .filter(|e| e["type"] == "rejection")
            .collect();
        assert_eq!(rejections.len(), 6);
        for e in &rejections {
            assert_eq!(e["recipient"], "r@d.test");
            assert_eq!(e["message_id"], "x9@src.test");
            assert_eq!(e["campaign"], "c1");
            assert!(e["response"].as_str().unwrap().starts_with("550 5."), "{e}");
        }
    });
}

#[test]
fn inject_fields_win_over_the_contents_headers() {
    run_with(ROUTE_CONFIG, async |core| {
        let requested = tags::Requested {
            campaign: Some("api-campaign".into()),
            pool: None,
            vmta: Some(tags::Named {
                name: "v2".into(),
                field: "vmta",
            }),
        };
        accept(
            &core.placement,
            Origin::Api {
                peer: "127.0.0.1".parse().unwrap(),
                customer: None,
                requested,
            },
            envelope(&["a@d.test"]),
            b"X-Volley-Campaign: header-campaign\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .expect("accepted");
        let handoff = core.handoffs.borrow()[0].clone();
        assert_eq!(&*handoff.vmta, "v2");
        let (stored_envelope, text) = stored(&core, &handoff);
        assert_eq!(stored_envelope.tags.campaign, "api-campaign");
        assert!(!text.contains("header-campaign"), "{text}");
        let unknown = tags::Requested {
            pool: Some(tags::Named {
                name: "nope".into(),
                field: "pool",
            }),
            ..Default::default()
        };
        let refused = accept(
            &core.placement,
            Origin::Api {
                peer: "127.0.0.1".parse().unwrap(),
                customer: None,
                requested: unknown,
            },
            envelope(&["a@d.test"]),
            b"\r\nx\r\n".to_vec(),
        )
        .await
        .expect_err("unknown pool");
        assert_eq!(refused.http_status(), 400);
        assert_eq!(refused.to_string(), "pool: no pool \"nope\"");
    });
}

#[test]
fn submission_accounts_the_message_id_it_added() {
    run_with(ROUTE_CONFIG, async |core| {
        accept(
            &core.placement,
            Origin::Smtp {
                helo: "x",
                ip: "192.0.2.1".parse().unwrap(),
                protocol: "ESMTPSA",
                authenticated: Some("acme"),
                relay_trusted: false,
            },
            envelope(&["a@d.test"]),
            b"Subject: no id\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .expect("accepted");
        let handoff = core.handoffs.borrow()[0].clone();
        let (stored_envelope, _) = stored(&core, &handoff);
        assert_eq!(
            stored_envelope.tags.message_id,
            format!("{}@mta.intake.test", handoff.id)
        );
    });
}

#[test]
fn a_hand_over_keeps_its_campaign() {
    run_with(PEER_CONFIG, async |core| {
        let xfer = Xfer {
            campaign: "spring".into(),
            ..sample_xfer(crate::clock::unix_s())
        };
        accept(
            &core.placement,
            from_peer("127.0.0.2"),
            envelope(&["a@d.test"]),
            handed_over(&xfer),
        )
        .await
        .expect("taken");
        let handoff = core.handoffs.borrow()[0].clone();
        assert_eq!(stored(&core, &handoff).0.tags.campaign, "spring");
        let xfer_in = events(&core);
        assert_eq!(xfer_in[0]["type"], "xfer_in");
        assert_eq!(xfer_in[0]["campaign"], "spring");
    });
}

#[test]
fn a_named_vmta_is_kept_while_out_and_a_name_gone_since_falls_back() {
    run_with(ROUTE_CONFIG, async |core| {
        let placement = &core.placement;
        let now_s = crate::clock::unix_s();
        placement
            .board
            .disable("v2", "by the operator", now_s, None);
        let pick = |route: Option<RouteChoice>| {
            crate::placement::pick_vmta(placement, "beta", route.as_ref()).to_string()
        };
        // Named: kept even while out (the mail waits for it; a move off it finds no other).
        assert_eq!(pick(Some(RouteChoice::Vmta("v2".into()))), "v2");
        // A pool whose every VMTA is out still queues on them.
        assert_eq!(pick(Some(RouteChoice::Pool("p2".into()))), "v2");
        assert_eq!(pick(Some(RouteChoice::Pool("default".into()))), "v1");
        // Gone after a reload: the customer's pool (beta's is p2).
        assert_eq!(pick(Some(RouteChoice::Vmta("gone".into()))), "v2");
        assert_eq!(
            crate::placement::pick_vmta(placement, "acme", Some(&RouteChoice::Pool("gone".into())))
                .to_string(),
            "v1"
        );
    });
}
