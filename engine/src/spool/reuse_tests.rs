//! Finished segment files made into later segments: old records never read as current, the end
//! of the written part found in a file full of old bytes, and the pool's bounds.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::tests::{config, copy_spool, expected_body, run, segment_files, store_n};
use super::*;
use crate::spool::record::RecordSeed;
use crate::spool::segment::{ScanEnd, SegmentScan};

fn core_dir(dir: &Path) -> PathBuf {
    segment::core_dir(dir, 0)
}

/// Free files in the core directory: (old number, inode).
fn free_files(dir: &Path) -> Vec<(u32, u64)> {
    segment::list_free_files(&core_dir(dir))
        .unwrap()
        .into_iter()
        .map(|n| {
            let path = core_dir(dir).join(segment::free_file_name(n));
            (n, std::fs::metadata(path).unwrap().ino())
        })
        .collect()
}

fn inode_of_segment(dir: &Path, number: u32) -> u64 {
    std::fs::metadata(segment::segment_path(dir, 0, number))
        .unwrap()
        .ino()
}

fn damaged_files(dir: &Path) -> usize {
    std::fs::read_dir(core_dir(dir))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".damaged")
        })
        .count()
}

/// Where the written part of segment `number` ends (its scan under its own seed).
fn written_end(dir: &Path, number: u32) -> (usize, Vec<u8>) {
    let bytes = std::fs::read(segment::segment_path(dir, 0, number)).unwrap();
    let mut scan = SegmentScan::new(&bytes, RecordSeed::for_segment(number));
    for _ in scan.by_ref() {}
    match scan.end() {
        Some(ScanEnd::Clean { offset }) => (offset, bytes),
        other => panic!("segment {number} ends {other:?}"),
    }
}

fn reuse_config(dir: &Path, free: usize) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 16 << 10,
        free_segment_files: free,
        ..config(dir)
    }
}

/// A spool whose first 30 messages (2 000-byte bodies, one recipient) are all delivered, so
/// their segments are reclaimed.
async fn spool_with_reclaimed_segments(cfg: &SpoolConfig) -> Spool {
    let (spool, _) = Spool::open(cfg.clone()).unwrap();
    let first = store_n(&spool, 30, 1, 2000).await;
    for (id, _) in &first {
        spool
            .set_state(*id, 0, RecipientState::Delivered)
            .await
            .unwrap();
    }
    assert!(spool.stats().segments_reclaimed >= 3);
    spool
}

#[test]
fn finished_files_are_made_into_later_segments_whose_old_records_are_never_read() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = reuse_config(dir.path(), 2);
        let spool = spool_with_reclaimed_segments(&cfg).await;
        // The pool holds at most its bound; the other finished files were deleted.
        assert_eq!(spool.stats().free_segment_files, 2);
        let freed = free_files(dir.path());
        assert_eq!(freed.len(), 2);
        let freed_inodes: Vec<u64> = freed.iter().map(|&(_, ino)| ino).collect();

        // Larger messages until a segment made from a free file is full and the next one holds
        // records: its end must read as an end, though old records lie beyond it (3 records
        // of 4 000 bytes leave about 3 800 of the 16 KiB file's old bytes).
        let mut second = Vec::new();
        let reused = loop {
            let id = spool.next_id();
            let n = second.len() as u64;
            let loc = spool
                .store(
                    id,
                    &tests::envelope(n, 1),
                    &tests::header(n),
                    &tests::body(n, 4000),
                )
                .await
                .unwrap();
            second.push((id, loc));
            let current = spool.inner.writer.borrow().number;
            let reused = second
                .iter()
                .map(|(_, l)| l.segment)
                .find(|&s| s < current && freed_inodes.contains(&inode_of_segment(dir.path(), s)));
            if let Some(reused) = reused {
                break reused;
            }
            assert!(second.len() < 500, "no segment made from a free file");
        };
        assert!(spool.stats().segments_reused >= 1);
        let (end, bytes) = written_end(dir.path(), reused);
        assert!(
            bytes[end + record::RECORD_HEADER_BYTES..]
                .iter()
                .any(|&b| b != 0),
            "old bytes lie past the written part"
        );
        let reader = SegmentReader::new(dir.path().to_path_buf());
        for (n, (id, loc)) in second.iter().enumerate() {
            let message = reader.message(*id, loc.record()).unwrap();
            assert_eq!(
                &*reader.body(message.body).unwrap(),
                &expected_body(n as u64, 4000)[..]
            );
        }
        spool.close().await.unwrap();
        drop(spool);

        let (spool, recovered) = Spool::open(cfg.clone()).unwrap();
        let ids: Vec<_> = recovered.iter().map(|m| m.id).collect();
        let expect: Vec<_> = second.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, expect);
        assert_eq!(spool.stats().corrupt_records_skipped, 0);
        assert_eq!(damaged_files(dir.path()), 0);
        spool.close().await.unwrap();
    });
}

#[test]
fn with_no_free_files_allowed_finished_files_are_deleted() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = reuse_config(dir.path(), 0);
        let spool = spool_with_reclaimed_segments(&cfg).await;
        store_n(&spool, 30, 1, 2000).await;
        let stats = spool.stats();
        assert_eq!(stats.free_segment_files, 0);
        assert_eq!(stats.segments_reused, 0);
        assert!(free_files(dir.path()).is_empty());
        spool.close().await.unwrap();
        // Free files kept under a larger bound are trimmed to the new one at start.
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_with_reclaimed_segments(&reuse_config(dir.path(), 3)).await;
        spool.close().await.unwrap();
        drop(spool);
        let before: Vec<u64> = free_files(dir.path()).iter().map(|&(_, ino)| ino).collect();
        assert_eq!(before.len(), 3);
        let (spool, _) = Spool::open(reuse_config(dir.path(), 1)).unwrap();
        // One kept, and made into the new segment at once; the other two deleted.
        let writer = spool.inner.writer.borrow().number;
        assert!(before.contains(&inode_of_segment(dir.path(), writer)));
        let inodes_left: Vec<u64> = std::fs::read_dir(core_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().ino())
            .filter(|ino| before.contains(ino))
            .collect();
        assert_eq!(inodes_left.len(), 1);
        assert!(free_files(dir.path()).len() <= 1);
        spool.close().await.unwrap();
        // And to `max_spool_bytes`: with room for the segments alone, none is kept at start.
        let dir = tempfile::tempdir().unwrap();
        let cfg = reuse_config(dir.path(), 3);
        let spool = spool_with_reclaimed_segments(&cfg).await;
        spool.close().await.unwrap();
        drop(spool);
        assert_eq!(free_files(dir.path()).len(), 3);
        let (spool, _) = Spool::open(SpoolConfig {
            max_spool_bytes: cfg.segment_bytes,
            ..cfg
        })
        .unwrap();
        // The new segment was created, not made of an old file: nothing but zeros after its
        // header (inode numbers cannot tell, the file system hands a deleted file's out again).
        let writer = spool.inner.writer.borrow().number;
        let bytes = std::fs::read(segment::segment_path(dir.path(), 0, writer)).unwrap();
        assert!(
            bytes[segment::SEGMENT_HEADER_BYTES..]
                .iter()
                .all(|&b| b == 0)
        );
        assert!(free_files(dir.path()).is_empty());
        spool.close().await.unwrap();
    });
}

#[test]
fn a_file_renamed_into_place_before_its_header_was_rewritten_reads_as_empty() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = reuse_config(dir.path(), 2);
        let spool = spool_with_reclaimed_segments(&cfg).await;
        let live = store_n(&spool, 2, 1, 100).await;
        spool.close().await.unwrap();
        drop(spool);
        // A crash between the rename and the header's write: the file is under its new name
        // with its old header and old records (all of them valid under the old number).
        let (old, _) = free_files(dir.path())[0];
        let last = *segment_files(dir.path()).last().unwrap();
        std::fs::rename(
            core_dir(dir.path()).join(segment::free_file_name(old)),
            segment::segment_path(dir.path(), 0, last + 1),
        )
        .unwrap();
        // And a free file of another segment size (the setting changed): deleted at open.
        std::fs::write(
            core_dir(dir.path()).join(segment::free_file_name(last + 100)),
            vec![0u8; 4096],
        )
        .unwrap();
        let (spool, recovered) = Spool::open(cfg.clone()).unwrap();
        let ids: Vec<_> = recovered.iter().map(|m| m.id).collect();
        assert_eq!(ids, live.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        assert_eq!(spool.stats().corrupt_records_skipped, 0);
        assert_eq!(damaged_files(dir.path()), 0);
        assert!(
            !free_files(dir.path()).iter().any(|&(n, _)| n == last + 100),
            "a free file of the wrong size is deleted"
        );
        // Numbers go on above every file's number, free ones included: a free file's old
        // records must never meet their own number's seed again.
        assert!(spool.inner.writer.borrow().number > last + 100);
        spool.close().await.unwrap();
    });
}

#[test]
fn old_bytes_past_the_last_record_end_the_scan_even_before_an_empty_spare() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let stored = store_n(&spool, 3, 1, 100).await;
        let current = spool.inner.writer.borrow().number;
        tests::spare_made(dir.path(), current + 1).await;
        spool.close().await.unwrap();
        drop(spool);
        // What a power cut leaves in a reused file: the zeroed header after the last record
        // never reached the disk, and an old record (another number's seed) lies there.
        let (end, mut bytes) = written_end(dir.path(), current);
        let mut stale = [0u8; record::STATE_RECORD_SPAN];
        record::encode_state(
            &mut stale,
            RecordSeed::for_segment(current - 1),
            &record::StateRecord {
                id: stored[0].0,
                message_segment: current - 1,
                recipient: 0,
                state: RecipientState::Delivered,
            },
        );
        bytes[end..end + stale.len()].copy_from_slice(&stale);
        let copy = copy_spool(dir.path());
        std::fs::write(segment::segment_path(copy.path(), 0, current), &bytes).unwrap();
        // The spare after it holds no record, so this is where the writing stopped: no damage.
        assert!(segment::segment_path(copy.path(), 0, current + 1).exists());
        let (spool, recovered) = Spool::open(SpoolConfig {
            dir: copy.path().to_path_buf(),
            ..cfg.clone()
        })
        .unwrap();
        assert_eq!(recovered.len(), 3);
        assert_eq!(spool.stats().corrupt_records_skipped, 0);
        spool.close().await.unwrap();
        // The same bytes before a segment that holds records: damage, as before.
        let (spool, _) = Spool::open(SpoolConfig {
            dir: copy.path().to_path_buf(),
            ..cfg.clone()
        })
        .unwrap();
        assert_eq!(
            spool.stats().corrupt_records_skipped,
            0,
            "repaired at the first open"
        );
        spool.close().await.unwrap();
        let damaged = copy_spool(dir.path());
        let (spool, _) = Spool::open(SpoolConfig {
            dir: damaged.path().to_path_buf(),
            ..cfg.clone()
        })
        .unwrap();
        store_n(&spool, 1, 1, 100).await;
        spool.close().await.unwrap();
        drop(spool);
        std::fs::write(segment::segment_path(damaged.path(), 0, current), &bytes).unwrap();
        let (spool, recovered) = Spool::open(SpoolConfig {
            dir: damaged.path().to_path_buf(),
            ..cfg
        })
        .unwrap();
        assert_eq!(recovered.len(), 4);
        assert_eq!(spool.stats().corrupt_records_skipped, 1);
        spool.close().await.unwrap();
    });
}

#[test]
fn segments_of_the_first_format_are_read_and_never_reused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = reuse_config(dir.path(), 4);
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let stored = store_n(&spool, 20, 1, 2000).await;
        spool.close().await.unwrap();
        drop(spool);
        // Rewrite every segment as the first format wrote it: version 1, unseeded checksums.
        for number in segment_files(dir.path()) {
            let path = segment::segment_path(dir.path(), 0, number);
            let mut bytes = std::fs::read(&path).unwrap();
            let offsets: Vec<usize> = SegmentScan::new(&bytes, RecordSeed::for_segment(number))
                .filter_map(|item| match item {
                    segment::ScanItem::Record { offset, .. } => Some(offset),
                    segment::ScanItem::CorruptPayload { .. } => None,
                })
                .collect();
            for at in offsets {
                let crc = RecordSeed::LEGACY.header_crc(&bytes[at..at + 12]);
                bytes[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
            }
            bytes[8..10].copy_from_slice(&segment::LEGACY_SEGMENT_VERSION.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[..60]);
            bytes[60..64].copy_from_slice(&crc.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
        }
        let (spool, recovered) = Spool::open(cfg).unwrap();
        assert_eq!(recovered.len(), stored.len());
        assert_eq!(spool.stats().corrupt_records_skipped, 0);
        let reader = SegmentReader::new(dir.path().to_path_buf());
        for (n, (id, loc)) in stored.iter().enumerate() {
            let message = reader.message(*id, loc.record()).unwrap();
            assert_eq!(
                &*reader.body(message.body).unwrap(),
                &expected_body(n as u64, 2000)[..]
            );
        }
        for (id, _) in &stored {
            spool
                .set_state(*id, 0, RecipientState::Delivered)
                .await
                .unwrap();
        }
        assert!(spool.stats().segments_reclaimed >= 3);
        assert!(
            free_files(dir.path()).is_empty(),
            "first-format files are deleted"
        );
        spool.close().await.unwrap();
    });
}

#[test]
fn the_pool_keeps_within_its_count_the_segment_size_and_max_spool_bytes() {
    let cfg = SpoolConfig {
        segment_bytes: 1 << 20,
        max_spool_bytes: 8 << 20,
        free_segment_files: 2,
        ..SpoolConfig::new("/unused", 0)
    };
    let usage = SegmentUsage {
        bytes: 1 << 20,
        ..SegmentUsage::default()
    };
    assert_eq!(reclaim_fate(&cfg, &usage, 2 << 20, 0), Reclaim::KeepFree);
    assert_eq!(reclaim_fate(&cfg, &usage, 2 << 20, 1), Reclaim::KeepFree);
    assert_eq!(reclaim_fate(&cfg, &usage, 2 << 20, 2), Reclaim::Delete);
    // Segments left (7 MiB) and one free file fill max_spool_bytes: the next is deleted.
    assert_eq!(reclaim_fate(&cfg, &usage, 7 << 20, 0), Reclaim::KeepFree);
    assert_eq!(reclaim_fate(&cfg, &usage, 7 << 20, 1), Reclaim::Delete);
    let other_size = SegmentUsage {
        bytes: 2 << 20,
        ..usage.clone()
    };
    assert_eq!(reclaim_fate(&cfg, &other_size, 0, 0), Reclaim::Delete);
    let legacy = SegmentUsage {
        legacy: true,
        ..usage.clone()
    };
    assert_eq!(reclaim_fate(&cfg, &legacy, 0, 0), Reclaim::Delete);
    let damaged = SegmentUsage {
        damaged: true,
        ..usage
    };
    assert_eq!(reclaim_fate(&cfg, &damaged, 0, 0), Reclaim::SetAside);
}
