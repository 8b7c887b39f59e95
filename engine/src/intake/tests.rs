//! One suite drives intake with each origin (SMTP, API, notice) through a real spool, router and
//! placement on one core, and checks the same steps happened in the same way for each: the
//! customer, the header lines, the charge, the durable record, the reception events, the handoff.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::*;
use crate::accounting::EventLog;
use crate::config::Config;
use crate::envelope::Recipient;
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

async fn core(dir: &std::path::Path) -> Core {
    let config = Arc::new(Config::parse(CONFIG).expect("config"));
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
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async {
            let dir = tempfile::tempdir().expect("dir");
            test(core(dir.path()).await).await;
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
        // Submission adds what the client left out (RFC 6409 8); the others do not.
        let (_, submitted) = stored(&core, &handoffs[1]);
        assert!(
            submitted.contains("(authenticated as other)"),
            "{submitted}"
        );
        assert!(submitted.contains("\r\nMessage-ID: <"), "{submitted}");
        let (_, relayed) = stored(&core, &handoffs[0]);
        assert!(!relayed.contains("Message-ID:"), "{relayed}");
    });
}

#[test]
fn a_plan_used_up_refuses_with_the_same_reply_whichever_way_in() {
    run(async |core| {
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let api = || Origin::Api {
            peer: ip,
            customer: Some("acme".into()),
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
