//! Spool tests against real files in temporary directories, inside a glommio executor.

use std::cell::Cell;
use std::path::Path;

use glommio::LocalExecutorBuilder;

use super::*;
use crate::envelope::{BodyType, DsnNotify, DsnRet, MessageTags, Recipient, RouteChoice};

thread_local! {
    static WARNINGS: Cell<usize> = const { Cell::new(0) };
}

/// Counts warnings per thread, so tests running in parallel do not see each other's.
struct WarningCounter;

impl log::Log for WarningCounter {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if record.level() <= log::Level::Warn {
            WARNINGS.with(|w| w.set(w.get() + 1));
        }
    }

    fn flush(&self) {}
}

static LOGGER: WarningCounter = WarningCounter;

pub(super) fn warnings() -> usize {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Warn);
    WARNINGS.with(|w| w.get())
}

pub(super) fn run<F: Future<Output = ()> + 'static>(f: F) {
    LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(f);
}

pub(super) fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        core: 0,
        segment_bytes: 64 << 10,
        max_spool_bytes: 1 << 30,
        fsync: false,
        lazy_state_sync_ms: 0,
        min_sync_interval_us: 0,
        sync_on: SyncOn::IoUring,
        free_segment_files: crate::spool::DEFAULT_FREE_SEGMENT_FILES,
    }
}

pub(super) fn envelope(n: u64, recipients: usize) -> Envelope {
    Envelope {
        sender: format!("sender{n}@example.net"),
        recipients: (0..recipients)
            .map(|r| Recipient {
                address: format!("r{r}.m{n}@example.com"),
                notify: DsnNotify::from_bits((r % 32) as u8),
                orcpt: r
                    .is_multiple_of(2)
                    .then(|| format!("rfc822;r{r}@example.com")),
            })
            .collect(),
        ret: if n.is_multiple_of(2) {
            DsnRet::Full
        } else {
            DsnRet::Headers
        },
        envid: n.is_multiple_of(3).then(|| format!("env-{n}")),
        body_type: BodyType::EightBitMime,
        smtputf8: n % 2 == 1,
        requiretls: n % 3 == 1,
        tls_optional: n % 5 == 2,
        customer: "acme".into(),
        received_at_s: 1_790_000_000 + n,
        // Some with tags (every kind of route), some without: both record forms recover.
        tags: match n % 4 {
            1 => MessageTags {
                message_id: format!("m{n}@example.net"),
                campaign: format!("c{n}"),
                route: Some(RouteChoice::Pool("p2".into())),
            },
            2 => MessageTags {
                route: Some(RouteChoice::Vmta("v2".into())),
                ..MessageTags::default()
            },
            _ => MessageTags::default(),
        },
    }
}

pub(super) fn header(n: u64) -> Vec<u8> {
    format!("Received: from client{n} by mx; date\r\n").into_bytes()
}

pub(super) fn body(n: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i as u64 + n) % 26) as u8)
        .collect()
}

pub(super) fn expected_body(n: u64, len: usize) -> Vec<u8> {
    [header(n), body(n, len)].concat()
}

pub(super) async fn store_n(
    spool: &Spool,
    count: u64,
    recipients: usize,
    len: usize,
) -> Vec<(MessageId, BodyLocation)> {
    let mut out = Vec::new();
    for n in 0..count {
        let id = spool.next_id();
        let loc = spool
            .store(id, &envelope(n, recipients), &header(n), &body(n, len))
            .await
            .expect("store");
        out.push((id, loc));
    }
    out
}

pub(super) fn segment_files(dir: &Path) -> Vec<u32> {
    segment::list_segments(&segment::core_dir(dir, 0)).unwrap()
}

/// `segment_files` without the spare made ahead in the background (there or not yet).
pub(super) fn segment_files_but_spare(spool: &Spool, dir: &Path) -> Vec<u32> {
    let spare = spool.inner.writer.borrow().number + 1;
    segment_files(dir)
        .into_iter()
        .filter(|&n| n != spare)
        .collect()
}

#[test]
fn store_then_reopen_recovers_envelopes_and_bodies() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            fsync: true,
            ..config(dir.path())
        };
        let (spool, recovered) = Spool::open(cfg.clone()).unwrap();
        assert!(recovered.is_empty());
        let stored = store_n(&spool, 50, 3, 3000).await;
        // Bodies read back before a restart, through the reader.
        let reader = SegmentReader::new(dir.path().to_path_buf());
        for (n, (_, loc)) in stored.iter().enumerate() {
            assert_eq!(
                &*reader.body(*loc).unwrap(),
                &expected_body(n as u64, 3000)[..]
            );
        }
        spool.close().await.unwrap();
        assert!(matches!(
            spool
                .store(spool.next_id(), &envelope(0, 1), b"", b"x")
                .await,
            Err(SpoolError::Closed)
        ));

        let (_spool, recovered) = Spool::open(cfg).unwrap();
        assert_eq!(recovered.len(), 50);
        let reader = SegmentReader::new(dir.path().to_path_buf());
        for (n, (m, (id, loc))) in recovered.iter().zip(&stored).enumerate() {
            let n = n as u64;
            assert_eq!(m.id, *id);
            assert_eq!(m.record, loc.record());
            assert_eq!(m.recipient_count, 3);
            assert_eq!(
                m.states().collect::<Vec<_>>(),
                vec![RecipientState::Pending; 3]
            );
            // The envelope stays in the spool; the reader gives it back with the body's place.
            let stored = reader.message(m.id, m.record).unwrap();
            assert_eq!(stored.envelope.to_envelope(), envelope(n, 3));
            assert_eq!(stored.body, *loc);
            assert_eq!(
                &*reader.body(stored.body).unwrap(),
                &expected_body(n, 3000)[..]
            );
        }
    });
}

#[test]
fn state_records_rebuild_recipient_states() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let stored = store_n(&spool, 3, 3, 100).await;
        let deferred = RecipientState::Deferred {
            next_attempt_s: 1_790_000_900,
            attempts: 2,
        };
        let (a, b, c) = (stored[0].0, stored[1].0, stored[2].0);
        spool
            .set_state(a, 0, RecipientState::Delivered)
            .await
            .unwrap();
        spool.set_state(a, 1, deferred).await.unwrap();
        spool
            .set_state(a, 1, RecipientState::Bounced)
            .await
            .unwrap(); // the later record wins
        spool
            .set_state(b, 0, RecipientState::Delivered)
            .await
            .unwrap();
        spool
            .set_state(b, 1, RecipientState::Bounced)
            .await
            .unwrap();
        spool
            .set_state(b, 2, RecipientState::Expired)
            .await
            .unwrap(); // b is finished
        spool.set_state(c, 2, deferred).await.unwrap();
        assert_eq!(spool.stats().live_messages, 2);
        assert!(matches!(
            spool.set_state(b, 0, RecipientState::Delivered).await,
            Err(SpoolError::UnknownMessage(_))
        ));
        assert!(matches!(
            spool.set_state(a, 3, RecipientState::Delivered).await,
            Err(SpoolError::NoSuchRecipient { .. })
        ));
        let foreign = MessageId {
            core: 9,
            seq: a.seq,
        };
        assert!(matches!(
            spool.set_state(foreign, 0, RecipientState::Delivered).await,
            Err(SpoolError::WrongCore { .. })
        ));
        spool.close().await.unwrap();

        let (_spool, recovered) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(recovered.len(), 2);
        assert_eq!(recovered[0].id, a);
        assert_eq!(
            recovered[0].states().collect::<Vec<_>>(),
            vec![
                RecipientState::Delivered,
                RecipientState::Bounced,
                RecipientState::Pending
            ]
        );
        assert_eq!(recovered[1].id, c);
        assert_eq!(
            recovered[1].states().collect::<Vec<_>>(),
            vec![RecipientState::Pending, RecipientState::Pending, deferred]
        );
    });
}

/// Copies core 0's segments of `from` into a fresh directory.
pub(super) fn copy_spool(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let (src, dst) = (segment::core_dir(from, 0), segment::core_dir(to.path(), 0));
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    to
}

#[test]
fn torn_tail_recovers_everything_before_it() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let stored = store_n(&spool, 4, 2, 150).await;
        spool.close().await.unwrap();
        drop(spool);
        let segment = stored[3].1.segment;
        let path = segment::segment_path(dir.path(), 0, segment);
        let record_end = |loc: BodyLocation| (loc.offset + loc.len as u64).next_multiple_of(8);
        let last_start = record_end(stored[2].1);
        // The payload's last byte; only the zero padding follows it.
        let last_end = stored[3].1.offset + stored[3].1.len as u64;
        for cut in last_start..last_end {
            for zero_instead_of_truncate in [false, true] {
                let copy = copy_spool(dir.path());
                let file = segment::segment_path(copy.path(), 0, segment);
                let mut bytes = std::fs::read(&file).unwrap();
                if zero_instead_of_truncate {
                    bytes[cut as usize..last_end as usize].fill(0);
                } else {
                    bytes.truncate(cut as usize);
                }
                std::fs::write(&file, &bytes).unwrap();
                let (reopened, recovered) = Spool::open(config(copy.path())).unwrap();
                let ids: Vec<_> = recovered.iter().map(|m| m.id).collect();
                let expect: Vec<_> = stored[..3].iter().map(|s| s.0).collect();
                assert_eq!(
                    ids, expect,
                    "cut at {cut}, zeroed: {zero_instead_of_truncate}"
                );
                // The torn message was never acknowledged; ids resume after the last recovered one.
                assert!(reopened.next_id().seq > stored[2].0.seq);
                reopened.close().await.unwrap();
                // The repaired tail stays repaired: a second recovery agrees.
                let (again, recovered) = Spool::open(config(copy.path())).unwrap();
                assert_eq!(recovered.len(), 3);
                again.close().await.unwrap();
            }
        }
        assert!(path.exists());
    });
}

#[test]
fn corrupt_record_in_the_middle_is_skipped_and_logged() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let stored = store_n(&spool, 5, 1, 200).await;
        spool.close().await.unwrap();
        let victim = stored[2].1;
        let path = segment::segment_path(dir.path(), 0, victim.segment);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[victim.offset as usize + 10] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();

        let before = warnings();
        let (spool, recovered) = Spool::open(config(dir.path())).unwrap();
        let after = warnings();
        let ids: Vec<_> = recovered.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            vec![stored[0].0, stored[1].0, stored[3].0, stored[4].0]
        );
        assert_eq!(spool.stats().corrupt_records_skipped, 1);
        assert!(after > before, "the skipped record was logged");
    });
}

#[test]
fn reclaim_deletes_finished_segments() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 16 << 10,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let stored = store_n(&spool, 40, 2, 2000).await;
        let first_segment = stored[0].1.segment;
        assert!(segment_files(dir.path()).len() >= 5);
        // A reader mapping taken before reclaim stays readable after the file is deleted.
        let reader = SegmentReader::new(dir.path().to_path_buf());
        let early = reader.body(stored[0].1).unwrap();
        for (id, _) in &stored {
            spool
                .set_state(*id, 0, RecipientState::Delivered)
                .await
                .unwrap();
        }
        assert_eq!(
            spool.stats().segments_reclaimed,
            0,
            "recipient 1 is still pending"
        );
        for (id, _) in &stored[..20] {
            spool
                .set_state(*id, 1, RecipientState::Bounced)
                .await
                .unwrap();
        }
        assert!(!segment_files(dir.path()).contains(&first_segment));
        let reclaimed_half = spool.stats().segments_reclaimed;
        assert!(reclaimed_half >= 1);
        assert_eq!(&*early, &expected_body(0, 2000)[..]);
        // One mapping of a reclaimed segment, one of a live one.
        reader.body(stored[39].1).unwrap();
        assert_eq!(reader.cached_maps(), 2);
        reader.sweep().await;
        assert_eq!(
            reader.cached_maps(),
            1,
            "the reclaimed segment's mapping is dropped, the live one's kept"
        );
        for (id, _) in &stored[20..] {
            spool
                .set_state(*id, 1, RecipientState::Expired)
                .await
                .unwrap();
        }
        let current = spool.inner.writer.borrow().number;
        // Only the segment being written (holding the last state records) remains, besides the
        // spare made ahead of time for the next switch.
        assert_eq!(segment_files_but_spare(&spool, dir.path()), vec![current]);
        assert_eq!(spool.stats().spool_bytes, cfg.segment_bytes);
        assert_eq!(spool.stats().live_messages, 0);
        spool.close().await.unwrap();
        let (spool, recovered) = Spool::open(cfg).unwrap();
        assert!(recovered.is_empty());
        assert!(
            spool.next_id().seq > stored[39].0.seq,
            "sequence survives reclaim of all messages"
        );
    });
}

#[test]
fn state_segment_is_kept_while_the_message_segment_lives() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 8 << 10,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        // a (2 recipients) and b share a segment; a's first recipient is delivered later on.
        let a = spool.next_id();
        spool
            .store(a, &envelope(0, 2), b"", &body(0, 100))
            .await
            .unwrap();
        let b = spool.next_id();
        spool
            .store(b, &envelope(1, 1), b"", &body(1, 100))
            .await
            .unwrap();
        let filler = store_n(&spool, 3, 1, 3000).await; // rolls over
        spool
            .set_state(a, 0, RecipientState::Delivered)
            .await
            .unwrap();
        spool
            .set_state(b, 0, RecipientState::Delivered)
            .await
            .unwrap();
        let more = store_n(&spool, 6, 1, 3000).await; // rolls over again
        for (id, _) in filler.iter().chain(&more) {
            spool
                .set_state(*id, 0, RecipientState::Delivered)
                .await
                .unwrap();
        }
        spool.close().await.unwrap();
        let (_spool, recovered) = Spool::open(cfg).unwrap();
        assert_eq!(
            recovered.len(),
            1,
            "b stays delivered, a keeps its delivered recipient"
        );
        assert_eq!(recovered[0].id, a);
        assert_eq!(
            recovered[0].states().collect::<Vec<_>>(),
            vec![RecipientState::Delivered, RecipientState::Pending]
        );
    });
}

#[test]
fn has_room_flips_at_the_limit_and_back_after_reclaim() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 16 << 10,
            max_spool_bytes: 3 * (16 << 10),
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg).unwrap();
        let mut stored = Vec::new();
        while spool.has_room(2000) {
            let id = spool.next_id();
            let loc = spool
                .store(id, &envelope(0, 1), b"", &body(0, 2000))
                .await
                .unwrap();
            stored.push((id, loc));
            assert!(stored.len() < 100, "has_room never turned false");
        }
        let id = spool.next_id();
        assert!(matches!(
            spool.store(id, &envelope(0, 1), b"", &body(0, 8000)).await,
            Err(SpoolError::Full)
        ));
        assert!(spool.stats().spool_bytes <= 3 * (16 << 10));
        // State records may still be written at the limit, so reclaim can free space.
        for (id, _) in &stored {
            spool
                .set_state(*id, 0, RecipientState::Delivered)
                .await
                .unwrap();
        }
        assert!(spool.has_room(2000));
        let id = spool.next_id();
        spool
            .store(id, &envelope(0, 1), b"", &body(0, 2000))
            .await
            .unwrap();
    });
}

#[test]
fn concurrent_stores_share_fsyncs() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            fsync: true,
            segment_bytes: 1 << 20,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg).unwrap();
        let writers: Vec<_> = (0..200u64)
            .map(|n| {
                let spool = spool.clone();
                glommio::spawn_local(async move {
                    let id = spool.next_id();
                    spool
                        .store(id, &envelope(n, 1), &header(n), &body(n, 1024))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut locations = Vec::new();
        for w in writers {
            locations.push(w.await);
        }
        let stats = spool.stats();
        assert_eq!(stats.messages_stored, 200);
        assert!(stats.fsyncs >= 1);
        assert!(
            stats.commits * 10 <= 200,
            "200 stores took {} commits",
            stats.commits
        );
        let reader = SegmentReader::new(dir.path().to_path_buf());
        for (n, loc) in locations.iter().enumerate() {
            assert_eq!(
                &*reader.body(*loc).unwrap(),
                &expected_body(n as u64, 1024)[..]
            );
        }
    });
}

#[test]
fn next_id_resumes_after_recovery() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let first = spool.next_id();
        assert_eq!(first.core, 0);
        let stored = store_n(&spool, 3, 1, 10).await;
        // An id taken but never stored is not remembered; a stored one is.
        spool.close().await.unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(spool.next_id().seq, stored[2].0.seq + 1);
    });
}

#[test]
fn oversize_records_and_bad_locations_are_refused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let id = spool.next_id();
        assert!(matches!(
            spool
                .store(id, &envelope(0, 1), b"", &vec![0u8; 70 << 10])
                .await,
            Err(SpoolError::TooLarge { .. })
        ));
        let foreign = MessageId { core: 3, seq: 1 };
        assert!(matches!(
            spool.store(foreign, &envelope(0, 1), b"", b"x").await,
            Err(SpoolError::WrongCore { .. })
        ));
        let loc = spool
            .store(id, &envelope(0, 1), b"", b"hello")
            .await
            .unwrap();
        let reader = SegmentReader::new(dir.path().to_path_buf());
        let past_end = BodyLocation {
            offset: 64 << 10,
            ..loc
        };
        assert!(matches!(reader.body(past_end), Err(SpoolError::Corrupt(_))));
        let missing = BodyLocation {
            segment: 999,
            ..loc
        };
        assert!(matches!(reader.body(missing), Err(SpoolError::Io(_))));
        assert_eq!(&*reader.body(loc).unwrap(), b"hello");
        assert!(matches!(
            Spool::open(SpoolConfig {
                segment_bytes: 100,
                ..config(dir.path())
            }),
            Err(SpoolError::Config(_))
        ));
    });
}

#[test]
fn empty_and_headerless_segment_files_are_survived() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let core_dir = segment::core_dir(dir.path(), 0);
        std::fs::create_dir_all(&core_dir).unwrap();
        // A crash right after creating a segment leaves an empty or all-zero file.
        std::fs::write(core_dir.join(segment::segment_file_name(1)), b"").unwrap();
        std::fs::write(
            core_dir.join(segment::segment_file_name(2)),
            vec![0xA5u8; 100],
        )
        .unwrap();
        std::fs::write(
            core_dir.join(segment::segment_file_name(3)),
            vec![0u8; 8192],
        )
        .unwrap();
        let (spool, recovered) = Spool::open(config(dir.path())).unwrap();
        assert!(recovered.is_empty());
        // Nothing live in them: reclaimed at open; the new segment is number 4. The damaged one
        // is set aside, not deleted.
        assert_eq!(segment_files_but_spare(&spool, dir.path()), vec![4]);
        assert!(core_dir.join("0000000002.seg.damaged").exists());
        store_n(&spool, 1, 1, 10).await;
    });
}

#[test]
fn relative_spool_dir_commits_with_fsync() {
    // The embedded default's spool_dir is relative; every commit (fsync on) must still succeed.
    let dir = tempfile::tempdir_in(".").unwrap();
    let relative = PathBuf::from(".").join(dir.path().file_name().unwrap());
    run(async move {
        let mut cfg = config(&relative);
        cfg.fsync = true;
        let (spool, _) = Spool::open(cfg).unwrap();
        let id = spool.next_id();
        spool
            .store(id, &envelope(1, 1), &header(1), &body(1, 100))
            .await
            .expect("stored durably");
        spool
            .set_state(id, 0, RecipientState::Delivered)
            .await
            .expect("state recorded durably");
    });
}

#[test]
fn envelopes_are_read_back_from_records_and_damage_is_refused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let stored = store_n(&spool, 3, 2, 100).await;
        spool.flush().await.unwrap();
        let reader = SegmentReader::new(dir.path().to_path_buf());
        let (id, loc) = stored[1];
        let message = reader.message(id, loc.record()).unwrap();
        assert_eq!(message.envelope.to_envelope(), envelope(1, 2));
        assert_eq!(message.body, loc);

        // Another message's record, a place that is no record, a segment that does not exist.
        let corrupt =
            |r: Result<StoredMessage, SpoolError>| matches!(r, Err(SpoolError::Corrupt(_)));
        assert!(corrupt(reader.message(stored[0].0, loc.record())));
        let mut off = loc.record();
        off.offset += 8;
        assert!(corrupt(reader.message(id, off)));
        off.offset = u32::MAX - 4;
        assert!(corrupt(reader.message(id, off)));
        let mut missing = loc.record();
        missing.segment = 999;
        assert!(matches!(
            reader.message(id, missing),
            Err(SpoolError::Io(_))
        ));

        // A flipped body byte fails the payload checksum: no envelope from a damaged record.
        let path = segment::segment_path(dir.path(), 0, loc.segment);
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"#", loc.offset + 3).unwrap();
        let fresh = SegmentReader::new(dir.path().to_path_buf());
        assert!(corrupt(fresh.message(id, loc.record())));
        let (other, other_loc) = stored[2];
        assert!(fresh.message(other, other_loc.record()).is_ok());
    });
}

#[test]
fn sequential_reading_keeps_one_segment_mapped() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let stored = store_n(&spool, 60, 2, 3000).await;
        spool.close().await.unwrap();
        let (_spool, recovered) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(recovered.len(), 60);
        let segments: std::collections::BTreeSet<u32> =
            recovered.iter().map(|m| m.record.segment).collect();
        assert!(segments.len() > 2, "spans several segments");
        let reader = SegmentReader::new(dir.path().to_path_buf());
        {
            let mut records = SequentialMessages::new(&reader);
            for (n, (m, (_, loc))) in recovered.iter().zip(&stored).enumerate() {
                let message = records.message(m.id, m.record).unwrap();
                assert_eq!(message.envelope.to_envelope(), envelope(n as u64, 2));
                assert_eq!(message.body, *loc);
                assert_eq!(reader.cached_maps(), 1);
            }
        }
        assert_eq!(
            reader.cached_maps(),
            0,
            "nothing stays mapped after routing"
        );
    });
}

#[test]
fn a_checksummed_but_malformed_envelope_is_skipped_at_recovery_and_refused_by_the_reader() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let stored = store_n(&spool, 3, 2, 100).await;
        spool.close().await.unwrap();
        let (id, loc) = stored[1];
        // Make message 1's DSN RET byte invalid and write checksums that match it: only the
        // envelope decoder can tell.
        let path = segment::segment_path(dir.path(), 0, loc.segment);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = loc.record_offset as usize;
        let payload_len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let payload = at + record::RECORD_HEADER_BYTES;
        bytes[payload + 11] = 9;
        let crc = crc32c::crc32c(&bytes[payload..payload + payload_len]);
        bytes[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
        let header_crc =
            record::RecordSeed::for_segment(loc.segment).header_crc(&bytes[at..at + 12]);
        bytes[at + 12..at + 16].copy_from_slice(&header_crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();

        let reader = SegmentReader::new(dir.path().to_path_buf());
        assert!(matches!(
            reader.message(id, loc.record()),
            Err(SpoolError::Corrupt(_))
        ));
        let (spool, recovered) = Spool::open(config(dir.path())).unwrap();
        let ids: Vec<_> = recovered.iter().map(|m| m.id).collect();
        assert_eq!(ids, [stored[0].0, stored[2].0]);
        assert_eq!(spool.stats().corrupt_records_skipped, 1);
    });
}

#[test]
fn missing_spool_directories_are_created_and_creating_again_is_harmless() {
    let root = tempfile::tempdir().unwrap();
    let core_dir = root.path().join("a/b/spool/core-0");
    super::create_dir_durably(&core_dir).unwrap();
    assert!(core_dir.is_dir());
    super::create_dir_durably(&core_dir).unwrap();
    assert!(core_dir.is_dir());
}

#[test]
fn a_writable_segment_appends_with_pwrite_and_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000001.seg");
    let mut segment = WritableSegment::create(
        &path,
        SegmentHeader {
            core: 0,
            segment: 1,
            created_at_s: 0,
            segment_bytes: MIN_SEGMENT_BYTES,
            next_seq: 1,
        },
    )
    .unwrap();
    let room = segment.remaining();
    let (first, seen) = segment
        .append(8, |dst| {
            assert_eq!(dst, [0; 8], "encode gets zeroed bytes");
            dst.copy_from_slice(b"abcdefgh");
            7
        })
        .unwrap()
        .unwrap();
    assert_eq!((first, seen), (SEGMENT_HEADER_BYTES, 7));
    let (second, ()) = segment
        .append(3, |dst| dst.copy_from_slice(b"xyz"))
        .unwrap()
        .unwrap();
    assert_eq!(second, SEGMENT_HEADER_BYTES + 8);
    assert_eq!(segment.remaining(), room - 11);
    assert!(
        segment.append(room, |_| ()).is_none(),
        "no room: nothing written"
    );
    assert_eq!(segment.remaining(), room - 11);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len() as u64, MIN_SEGMENT_BYTES, "pre-allocated");
    assert_eq!(&file[first..first + 11], b"abcdefghxyz");
    assert!(
        SegmentHeader::decode(&file).is_some(),
        "the header is on disk"
    );
}

#[test]
fn a_message_whose_commit_failed_never_comes_back() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let kept = store_n(&spool, 1, 2, 100).await[0].0;
        spool.fail_next_commit(std::io::ErrorKind::Other);
        let failed = spool.next_id();
        let answer = spool.store(failed, &envelope(1, 1), b"", b"x").await;
        assert!(
            matches!(answer, Err(SpoolError::Poisoned { .. })),
            "{answer:?}"
        );
        assert_eq!(spool.stats().live_messages, 1);
        // The record is in the segment all the same: only the voided range keeps it out.
        assert!(
            segment::core_dir(dir.path(), 0)
                .join(voided::VOIDED_FILE_NAME)
                .exists()
        );
        let later = spool.next_id();
        assert!(matches!(
            spool.store(later, &envelope(2, 1), b"", b"x").await,
            Err(SpoolError::Poisoned { .. })
        ));
        drop(spool);

        let (_spool, recovered) = Spool::open(config(dir.path())).unwrap();
        let ids: Vec<MessageId> = recovered.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![kept]);
    });
}

#[test]
fn after_a_full_disk_at_commit_later_records_in_the_same_segment_still_count() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let a = store_n(&spool, 1, 2, 100).await[0].0;
        let commits = spool.stats().commits;
        assert!(commits >= 1);
        spool.fail_next_commit(std::io::ErrorKind::StorageFull);
        let b = spool.next_id();
        assert!(matches!(
            spool.store(b, &envelope(1, 1), b"", b"x").await,
            Err(SpoolError::Full)
        ));
        assert_eq!(
            spool.stats().commits,
            commits,
            "a failed commit is not counted"
        );
        // A state record whose commit fails leaves the index as recovery would find it, so the
        // same state can be recorded again.
        spool.fail_next_commit(std::io::ErrorKind::StorageFull);
        assert!(matches!(
            spool.set_state(a, 0, RecipientState::Delivered).await,
            Err(SpoolError::Full)
        ));
        let c = store_n(&spool, 1, 1, 100).await[0].0;
        assert_eq!(spool.stats().commits, commits + 1);
        spool
            .set_state(a, 1, RecipientState::Bounced)
            .await
            .unwrap();
        assert_eq!(spool.stats().live_messages, 2);
        spool.close().await.unwrap();

        let (spool, recovered) = Spool::open(config(dir.path())).unwrap();
        let ids: Vec<MessageId> = recovered.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            vec![a, c],
            "b was answered an error: it must not come back"
        );
        assert_eq!(
            recovered[0].states().collect::<Vec<_>>(),
            vec![RecipientState::Pending, RecipientState::Bounced]
        );
        assert_eq!(spool.stats().corrupt_records_skipped, 0);
        spool
            .set_state(a, 0, RecipientState::Delivered)
            .await
            .unwrap();
        assert_eq!(spool.stats().live_messages, 1);
    });
}

#[test]
fn voided_ranges_of_segments_gone_are_dropped_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let core_dir = segment::core_dir(dir.path(), 0);
    std::fs::create_dir_all(&core_dir).unwrap();
    let stale = voided::VoidedRange {
        segment: 1,
        from: 64,
        to: 4096,
    };
    voided::append(&core_dir, &[stale]).unwrap();
    run(async move {
        // No segment exists: segment 1 is about to be made again, and must not inherit the range.
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        assert!(!core_dir.join(voided::VOIDED_FILE_NAME).exists());
        let id = store_n(&spool, 1, 1, 100).await[0].0;
        spool.close().await.unwrap();
        drop(spool);
        let (_spool, recovered) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(recovered.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
    });
}

#[test]
fn a_core_directory_is_opened_by_one_spool_at_a_time() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let id = store_n(&spool, 1, 1, 100).await[0].0;
        match Spool::open(config(dir.path())) {
            Err(SpoolError::Locked { path, holder }) => {
                assert_eq!(path, segment::core_dir(dir.path(), 0).join(LOCK_FILE_NAME));
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {:?}", other.map(|(_, m)| m)),
        }
        // Another core of the same spool directory is not held.
        let other_core = SpoolConfig {
            core: 1,
            ..config(dir.path())
        };
        drop(Spool::open(other_core).unwrap());
        // Closing gives the directory up; the refused open touched nothing.
        spool.close().await.unwrap();
        let (_spool, recovered) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(recovered.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
    });
}

#[test]
fn a_notice_may_use_the_segment_beyond_the_limit_and_no_more() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 16 << 10,
            max_spool_bytes: 16 << 10,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg).unwrap();
        let mut stored = 0;
        loop {
            let id = spool.next_id();
            match spool.store(id, &envelope(0, 1), b"", &body(0, 2000)).await {
                Ok(_) => stored += 1,
                Err(SpoolError::Full) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(stored < 100, "messages are bounded");
        }
        // A bounce notice still fits (in one more segment), so bounces can free the spool.
        let mut notices = 0;
        loop {
            let id = spool.next_id();
            match spool
                .store_notice(id, &envelope(1, 1), b"", &body(1, 2000))
                .await
            {
                Ok(_) => notices += 1,
                Err(SpoolError::Full) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(notices < 100, "notices are bounded too");
        }
        assert!(notices >= 5, "{notices}");
        assert_eq!(spool.stats().spool_bytes, 2 * (16 << 10));
    });
}

#[test]
fn records_written_while_a_commit_was_failing_fail_with_it() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let kept = store_n(&spool, 1, 1, 100).await[0].0;
        spool.fail_next_commit(std::io::ErrorKind::Other);
        let first = glommio::spawn_local({
            let spool = spool.clone();
            async move {
                let id = spool.next_id();
                spool.store(id, &envelope(1, 1), b"", b"x").await
            }
        });
        // Once the committer has taken the first batch, the next record joins a second one.
        while spool.inner.commit.pending_batch().is_some() {
            glommio::yield_if_needed().await;
            futures_lite::future::yield_now().await;
        }
        let second = spool.next_id();
        let answer = spool.store(second, &envelope(2, 1), b"", b"y").await;
        assert!(
            matches!(answer, Err(SpoolError::Poisoned { .. })),
            "{answer:?}"
        );
        assert!(matches!(first.await, Err(SpoolError::Poisoned { .. })));
        drop(spool);

        let (_spool, recovered) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(
            recovered.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![kept]
        );
    });
}

/// Waits (yielding to the executor) until the spare segment file exists.
pub(super) async fn spare_made(dir: &Path, number: u32) {
    for _ in 0..10_000 {
        if segment_files(dir).contains(&number) {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("spare segment {number} never made");
}

#[test]
fn switching_segments_never_blocks_the_executor() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 8 << 10,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg).unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let starved = Arc::new(AtomicBool::new(false));
        let creations = Arc::new(AtomicU64::new(0));
        // Each segment creation waits for a ticker task on the spool's executor to tick three
        // times. Were a creation made on the executor's thread, the ticker could not run: the
        // wait gives up after 10 s and marks the test starved (once, so a failure is quick).
        let hook = {
            let (ticks, starved, creations) = (ticks.clone(), starved.clone(), creations.clone());
            Arc::new(move || {
                creations.fetch_add(1, Ordering::SeqCst);
                // Once the ticker has stopped (ticks parked at u64::MAX) nothing is left to wait for.
                if starved.load(Ordering::SeqCst) || ticks.load(Ordering::SeqCst) == u64::MAX {
                    return;
                }
                let until = ticks.load(Ordering::SeqCst).saturating_add(3);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while ticks.load(Ordering::SeqCst) < until {
                    if std::time::Instant::now() > deadline {
                        starved.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        spool.on_segment_creation(hook);
        let stop = Rc::new(Cell::new(false));
        let ticker = glommio::spawn_local({
            let (ticks, stop) = (ticks.clone(), stop.clone());
            async move {
                while !stop.get() {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        });
        let first = spool.inner.writer.borrow().number;
        let stored = store_n(&spool, 40, 1, 1000).await;
        let last = spool.inner.writer.borrow().number;
        stop.set(true);
        ticker.await;
        ticks.store(u64::MAX, Ordering::SeqCst);
        assert!(last >= first + 5, "segments rolled: {first}..{last}");
        // Segment `first + 1` was made ahead at open, before the hook was set, and the spare
        // after `last` may still be on its way: segments `first + 2 ..= last` went through it.
        assert!(
            creations.load(Ordering::SeqCst) >= u64::from(last - first - 1),
            "every segment made after the hook was set went through it"
        );
        assert!(
            !starved.load(Ordering::SeqCst),
            "a segment was created on the executor's thread"
        );
        for (n, (_, loc)) in stored.iter().enumerate() {
            let reader = SegmentReader::new(dir.path().to_path_buf());
            assert_eq!(
                &*reader.body(*loc).unwrap(),
                &expected_body(n as u64, 1000)[..]
            );
        }
        spool.close().await.unwrap();
    });
}

#[test]
fn a_segment_made_ahead_is_stamped_when_it_becomes_current() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 8 << 10,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let first = spool.inner.writer.borrow().number;
        // Made at open, while the next sequence number was still 1.
        spare_made(dir.path(), first + 1).await;
        let stored = store_n(&spool, 12, 1, 1000).await;
        let (id, loc) = stored
            .iter()
            .find(|(_, loc)| loc.segment == first + 1)
            .copied()
            .expect("a message in the second segment");
        let bytes = std::fs::read(segment::segment_path(dir.path(), 0, loc.segment)).unwrap();
        let header = SegmentHeader::decode(&bytes).expect("header");
        assert_eq!(header.segment, first + 1);
        assert_eq!(
            header.next_seq,
            id.seq + 1,
            "next_seq of the switch, not of the preparation"
        );
        spool.close().await.unwrap();
        // The spare counts towards max_spool_bytes: none is made when it would not fit.
        let tight_dir = tempfile::tempdir().unwrap();
        let tight = SpoolConfig {
            max_spool_bytes: cfg.segment_bytes,
            ..config(tight_dir.path())
        };
        let (spool, _) = Spool::open(tight).unwrap();
        let current = spool.inner.writer.borrow().number;
        for _ in 0..20 {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(spool.inner.spare.borrow().is_none());
        assert_eq!(segment_files(tight_dir.path()), vec![current]);
        spool.close().await.unwrap();
    });
}

#[test]
fn a_spare_that_could_not_be_made_is_made_again_at_the_switch() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 8 << 10,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg).unwrap();
        let first = spool.inner.writer.borrow().number;
        spare_made(dir.path(), first + 1).await;
        // The spare for first + 2 finds a file in its place (creation fails); the switch to it
        // then makes it again, after the obstacle is gone.
        let blocked = segment::segment_path(dir.path(), 0, first + 2);
        let calls = Arc::new(AtomicU32::new(0));
        spool.on_segment_creation({
            let (calls, blocked) = (calls.clone(), blocked.clone());
            Arc::new(move || match calls.fetch_add(1, Ordering::SeqCst) {
                0 => std::fs::write(&blocked, b"in the way").unwrap(),
                1 => std::fs::remove_file(&blocked).unwrap(),
                _ => {}
            })
        });
        let warnings_before = warnings();
        let stored = store_n(&spool, 30, 1, 1000).await;
        assert!(
            calls.load(Ordering::SeqCst) >= 3,
            "spare, retry, next spare"
        );
        assert!(warnings() > warnings_before, "the failed spare is logged");
        assert!(stored.iter().any(|(_, loc)| loc.segment == first + 2));
        let reader = SegmentReader::new(dir.path().to_path_buf());
        for (n, (_, loc)) in stored.iter().enumerate() {
            assert_eq!(
                &*reader.body(*loc).unwrap(),
                &expected_body(n as u64, 1000)[..]
            );
        }
        spool.close().await.unwrap();
    });
}

#[test]
fn delivered_and_deferred_states_ride_with_the_next_commit() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            fsync: true,
            lazy_state_sync_ms: 200,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let stored = store_n(&spool, 3, 2, 100).await;
        let commits = spool.stats().commits;
        // Returns before any commit: nothing waits for a delivery's record.
        spool
            .set_state(stored[0].0, 0, RecipientState::Delivered)
            .await
            .unwrap();
        assert_eq!(spool.stats().commits, commits);
        // The next message's commit carries it: one commit for both.
        store_n(&spool, 1, 1, 100).await;
        assert_eq!(spool.stats().commits, commits + 1);
        // A deferral alone starts a commit of its own once `lazy_state_sync_ms` has passed.
        let deferred = RecipientState::Deferred {
            next_attempt_s: 1_790_000_900,
            attempts: 1,
        };
        spool.set_state(stored[1].0, 0, deferred).await.unwrap();
        assert_eq!(spool.stats().commits, commits + 1);
        glommio::timer::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(spool.stats().commits, commits + 2);
        // A bounce waits for its own commit (its DSN depends on it).
        spool
            .set_state(stored[2].0, 0, RecipientState::Bounced)
            .await
            .unwrap();
        assert_eq!(spool.stats().commits, commits + 3);
        // A lazy record pending at close is made durable by it.
        spool
            .set_state(stored[0].0, 1, RecipientState::Delivered)
            .await
            .unwrap();
        spool.close().await.unwrap();
        assert_eq!(spool.stats().commits, commits + 4);
        drop(spool);
        let (_spool, recovered) = Spool::open(cfg).unwrap();
        let states: Vec<Vec<RecipientState>> =
            recovered.iter().map(|m| m.states().collect()).collect();
        assert!(
            recovered.iter().all(|m| m.id != stored[0].0),
            "both recipients of the first message delivered: {states:?}"
        );
        let second = recovered.iter().find(|m| m.id == stored[1].0).unwrap();
        assert_eq!(
            second.states().collect::<Vec<_>>(),
            vec![deferred, RecipientState::Pending]
        );
    });
}

#[test]
fn a_transactions_states_are_written_together_or_not_at_all() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let stored = store_n(&spool, 2, 4, 100).await;
        let (a, b) = (stored[0].0, stored[1].0);
        let delivered = RecipientState::Delivered;
        let records = spool.stats().state_records;
        // A recipient the message does not have: none of the states is recorded.
        assert!(matches!(
            spool.set_states(a, &[(0, delivered), (4, delivered)]).await,
            Err(SpoolError::NoSuchRecipient { recipient: 4, .. })
        ));
        assert_eq!(spool.stats().state_records, records);
        spool
            .set_states(a, &[(0, delivered), (1, delivered), (3, delivered)])
            .await
            .unwrap();
        assert_eq!(spool.stats().state_records, records + 3);
        let all: Vec<_> = (0..4).map(|r| (r, delivered)).collect();
        spool.set_states(b, &all).await.unwrap();
        assert_eq!(spool.stats().live_messages, 1, "b is finished");
        spool.close().await.unwrap();
        drop(spool);
        let (_spool, recovered) = Spool::open(cfg).unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].id, a);
        assert_eq!(
            recovered[0].states().collect::<Vec<_>>(),
            vec![delivered, delivered, RecipientState::Pending, delivered]
        );
    });
}

#[test]
fn several_messages_states_are_written_together_or_not_at_all() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let stored = store_n(&spool, 3, 4, 100).await;
        let (a, b, c) = (stored[0].0, stored[1].0, stored[2].0);
        let delivered = RecipientState::Delivered;
        let deferred = RecipientState::Deferred {
            next_attempt_s: 1_000,
            attempts: 1,
        };
        let records = spool.stats().state_records;
        // One message of the batch is not in the spool: nothing is recorded for the others.
        let unknown = MessageId {
            core: a.core,
            seq: 999,
        };
        assert!(matches!(
            spool
                .set_states_of(&[(a, &[(0, delivered)]), (unknown, &[(0, delivered)])])
                .await,
            Err(SpoolError::UnknownMessage(id)) if id == unknown
        ));
        assert_eq!(spool.stats().state_records, records);
        // b finished, a in two groups (two transactions' outcomes), c deferred.
        let all: Vec<_> = (0..4).map(|r| (r, delivered)).collect();
        spool
            .set_states_of(&[
                (a, &[(0, delivered), (1, delivered)]),
                (b, &all),
                (c, &[(2, deferred)]),
                (a, &[(3, delivered)]),
            ])
            .await
            .unwrap();
        assert_eq!(spool.stats().state_records, records + 8);
        assert_eq!(spool.stats().live_messages, 2, "b is finished");
        spool.close().await.unwrap();
        drop(spool);
        let (_spool, recovered) = Spool::open(cfg).unwrap();
        let states = |id| {
            recovered
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.states().collect::<Vec<_>>())
        };
        assert_eq!(states(b), None);
        assert_eq!(
            states(a),
            Some(vec![
                delivered,
                delivered,
                RecipientState::Pending,
                delivered
            ])
        );
        assert_eq!(
            states(c),
            Some(vec![
                RecipientState::Pending,
                RecipientState::Pending,
                deferred,
                RecipientState::Pending
            ])
        );
    });
}

#[test]
fn commits_start_no_closer_than_the_configured_interval() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            fsync: true,
            min_sync_interval_us: 400_000,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(cfg).unwrap();
        let started = std::time::Instant::now();
        store_n(&spool, 1, 1, 100).await;
        let first = started.elapsed();
        // The next message's commit starts only 400 ms after the first one's did.
        store_n(&spool, 1, 1, 100).await;
        let second = started.elapsed();
        assert!(first < std::time::Duration::from_millis(400), "{first:?}");
        assert!(
            second >= std::time::Duration::from_millis(400),
            "{first:?} then {second:?}"
        );
        assert_eq!(spool.stats().commits, 2);
    });
}
