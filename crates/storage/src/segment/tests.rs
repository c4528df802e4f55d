use super::*;
use rand::{Rng, SeedableRng};

fn small() -> SegmentLogConfig {
    SegmentLogConfig {
        segment_bytes_max: 4096,
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn append_all(log: &mut SegmentLog, entries: &[(u64, Vec<u8>)]) {
    log.append(entries.iter().map(|(i, p)| (*i, p.as_slice())))
        .unwrap();
}

fn read_all(log: &SegmentLog) -> Vec<(u64, Vec<u8>)> {
    match (log.first_index(), log.last_index()) {
        (Some(f), Some(l)) => log
            .read(f, l + 1, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(i, p)| (i, p.to_vec()))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn append_read_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=300)
        .map(|i| (i, payload(i, 50 + (i as usize % 90))))
        .collect();
    {
        let (mut log, report) = SegmentLog::open(dir.path(), small(), None).unwrap();
        assert_eq!(report.entries, 0);
        append_all(&mut log, &entries[..100]);
        append_all(&mut log, &entries[100..]);
        assert!(log.segment_count() > 3, "small segments roll");
        assert_eq!(read_all(&log), entries);
        log.sync_all().unwrap();
    }
    let (log, report) = SegmentLog::open(dir.path(), small(), None).unwrap();
    assert_eq!(report.entries, 300);
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_eq!(read_all(&log), entries);
    // Byte-bounded reads return at least one entry and stop at the bound.
    let some = log.read(10, 301, 200).unwrap();
    assert!(!some.is_empty() && some.len() < 5);
    assert_eq!(some[0].0, 10);
    assert_eq!(log.read(10, 11, 0).unwrap().len(), 1);
}

#[test]
fn a_bounded_read_returns_the_longest_prefix_within_the_bound_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=120)
        .map(|i| (i, payload(i, 40 + (i as usize * 7 % 200))))
        .collect();
    let (mut log, _) = SegmentLog::open(dir.path(), small(), None).unwrap();
    append_all(&mut log, &entries);
    assert!(log.segment_count() > 3);
    for start in [1u64, 2, 17, 60, 119, 120] {
        for budget in [0usize, 39, 40, 250, 1000, 4096, 9000, usize::MAX] {
            let got = log.read(start, 121, budget).unwrap();
            // The expected answer, from the payload sizes alone.
            let mut want = Vec::new();
            let mut sum = 0usize;
            for (i, p) in &entries[(start - 1) as usize..] {
                if !want.is_empty() && sum + p.len() > budget {
                    break;
                }
                sum += p.len();
                want.push((*i, p.clone()));
            }
            let got: Vec<_> = got.into_iter().map(|(i, p)| (i, p.to_vec())).collect();
            assert_eq!(got, want, "start {start}, budget {budget}");
        }
    }
    // An end before the segment's last entry is kept too.
    assert_eq!(log.read(5, 8, usize::MAX).unwrap().len(), 3);
}

#[test]
fn zero_filled_space_is_kept_ahead_of_appends_and_recovered_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let config = SegmentLogConfig {
        segment_bytes_max: 1 << 20,
    };
    let entries: Vec<_> = (1..=50).map(|i| (i, payload(i, 1000))).collect();
    let path;
    {
        let (mut log, _) = SegmentLog::open(dir.path(), config.clone(), None).unwrap();
        append_all(&mut log, &entries);
        log.sync_all().unwrap();
        let active = log.segments.last().unwrap();
        path = active.path.clone();
        let len = fs::metadata(&path).unwrap().len();
        assert!(
            len >= active.end + ZERO_AHEAD_MIN_BYTES / 2,
            "len {len}, end {}",
            active.end
        );
        assert_eq!(len, active.zeroed);
        assert_eq!(
            log.disk_bytes(),
            active.end,
            "disk_bytes counts frames, not zeros"
        );
    }
    // A clean reopen finds every entry and reports no torn tail; appends continue.
    let (mut log, report) = SegmentLog::open(dir.path(), config.clone(), None).unwrap();
    assert_eq!((report.entries, report.torn_bytes_truncated), (50, 0));
    assert_eq!(read_all(&log), entries);
    log.append([(51u64, &b"after reopen"[..])]).unwrap();
    drop(log);
    // A frame cut short by a crash, then zeros: the torn frame goes, nothing before it.
    let (log, _) = SegmentLog::open(dir.path(), config.clone(), None).unwrap();
    let end = log.segments.last().unwrap().end;
    drop(log);
    let mut bytes = fs::read(&path).unwrap();
    let start = end as usize;
    let mut frame = Vec::new();
    frame::encode_frame(&mut frame, 52, &[7u8; 300]);
    bytes[start..start + 100].copy_from_slice(&frame[..100]);
    fs::write(&path, &bytes).unwrap();
    let (log, report) = SegmentLog::open(dir.path(), config, None).unwrap();
    assert_eq!(log.last_index(), Some(51));
    assert!(report.torn_bytes_truncated > 0);
}

#[test]
fn a_sealed_segment_left_with_zeros_by_a_crash_is_cut_to_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=40).map(|i| (i, payload(i, 200))).collect();
    let (mut log, _) = SegmentLog::open(dir.path(), small(), None).unwrap();
    append_all(&mut log, &entries);
    log.sync_all().unwrap();
    let sealed = log.segments[0].path.clone();
    let sealed_len = fs::metadata(&sealed).unwrap().len();
    drop(log);
    // As if the crash came after sealing extended... before the cut reached the disk.
    let f = OpenOptions::new().write(true).open(&sealed).unwrap();
    f.set_len(sealed_len + 5000).unwrap();
    let (log, report) = SegmentLog::open(dir.path(), small(), None).unwrap();
    assert_eq!(report.torn_bytes_truncated, 0);
    assert_eq!(read_all(&log), entries);
    assert_eq!(fs::metadata(&sealed).unwrap().len(), sealed_len);
}

#[test]
fn non_contiguous_append_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), small(), None).unwrap();
    log.append([(5u64, &b"a"[..])]).unwrap();
    let err = log.append([(7u64, &b"b"[..])]).unwrap_err();
    assert!(matches!(
        err,
        StorageError::NonContiguous {
            expected: 6,
            got: 7
        }
    ));
    assert!(matches!(
        log.read(1, 3, 10),
        Err(StorageError::OutOfRange { .. })
    ));
}

#[test]
fn truncate_after_removes_suffix_durably() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (0..200).map(|i| (i, payload(i, 100))).collect();
    {
        let (mut log, _) = SegmentLog::open(dir.path(), small(), None).unwrap();
        append_all(&mut log, &entries);
        log.truncate_after(120).unwrap();
        assert_eq!(log.last_index(), Some(120));
        // Conflicting entries from a newer term replace the suffix.
        let newer: Vec<_> = (121..150).map(|i| (i, payload(i + 1000, 70))).collect();
        append_all(&mut log, &newer);
        log.sync_all().unwrap();
    }
    let (log, _) = SegmentLog::open(dir.path(), small(), None).unwrap();
    let got = read_all(&log);
    assert_eq!(got.len(), 150);
    assert_eq!(&got[..121], &entries[..121]);
    assert_eq!(got[121].1, payload(1121, 70));
    // Truncating everything leaves an empty log that accepts a fresh start.
    let (mut log, _) = SegmentLog::open(dir.path(), small(), None).unwrap();
    log.truncate_after(0).unwrap();
    assert_eq!(log.last_index(), Some(0));
}

#[test]
fn drop_prefix_deletes_whole_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=300).map(|i| (i, payload(i, 100))).collect();
    let (mut log, _) = SegmentLog::open(dir.path(), small(), None).unwrap();
    append_all(&mut log, &entries);
    let before = log.segment_count();
    log.drop_prefix(150).unwrap();
    assert!(log.segment_count() < before);
    assert_eq!(log.first_index(), Some(151));
    assert!(log.read(150, 152, usize::MAX).is_err());
    assert_eq!(read_all(&log), entries[150..].to_vec());
    drop(log);
    let (mut log, _) = SegmentLog::open(dir.path(), small(), Some(150)).unwrap();
    assert_eq!(read_all(&log), entries[150..].to_vec());
    // Purging past the tail (a snapshot was installed) lets the log restart further on.
    log.drop_prefix(1000).unwrap();
    assert_eq!(log.first_index(), None);
    log.append([(1001u64, &b"x"[..])]).unwrap();
    assert_eq!(log.first_index(), Some(1001));
    assert_eq!(log.segment_count(), 1);
    drop(log);
    let (log, _) = SegmentLog::open(dir.path(), small(), Some(1000)).unwrap();
    assert_eq!(read_all(&log), vec![(1001, b"x".to_vec())]);
}

/// Where each entry's frame lives, to reason about what a mutation damaged.
struct Layout {
    /// (segment path, frame start, frame end, log index), in log order.
    frames: Vec<(PathBuf, u64, u64, u64)>,
}

fn layout(log: &SegmentLog) -> Layout {
    let mut frames = Vec::new();
    for seg in &log.segments {
        for (i, off) in seg.offsets.iter().enumerate() {
            let end = seg.offsets.get(i + 1).copied().unwrap_or(seg.end);
            frames.push((seg.path.clone(), *off, end, seg.base + i as u64));
        }
    }
    Layout { frames }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Crash test: cut segment files at random offsets and flip random bytes; recovery must return
/// exactly a prefix of what was written (never an invented, reordered or skipped entry), keep
/// every frame that lies wholly before a cut in the last segment, and report damage that a crash
/// cannot explain as corruption.
#[test]
fn recovery_after_cuts_and_flips_never_invents_or_skips() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let entries: Vec<_> = (1..=120)
        .map(|i| (i, payload(i, 10 + (i as usize * 7) % 300)))
        .collect();
    let (mut log, _) = SegmentLog::open(&src, small(), None).unwrap();
    append_all(&mut log, &entries);
    log.sync_all().unwrap();
    let lay = layout(&log);
    let segs: Vec<PathBuf> = log.segments.iter().map(|s| s.path.clone()).collect();
    let last_seg = segs.last().unwrap().clone();
    let last_end = log.segments.last().unwrap().end;
    for seg in &log.segments[..log.segments.len() - 1] {
        assert_eq!(
            fs::metadata(&seg.path).unwrap().len(),
            seg.end,
            "a sealed segment holds its frames and nothing after them"
        );
    }
    assert!(
        fs::metadata(&last_seg).unwrap().len() > last_end,
        "the active segment is zero-filled ahead of its frames"
    );
    drop(log);

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let (mut ok_runs, mut corrupt_runs) = (0, 0);
    for trial in 0..400 {
        let work = dir.path().join(format!("t{trial}"));
        copy_dir(&src, &work);
        let seg = if rng.random_bool(0.6) {
            last_seg.clone()
        } else {
            segs[rng.random_range(0..segs.len())].clone()
        };
        let target = work.join(seg.file_name().unwrap());
        let mut bytes = fs::read(&target).unwrap();
        let pos = rng.random_range(0..bytes.len());
        let cut = rng.random_bool(0.5);
        if cut {
            bytes.truncate(pos);
        } else {
            bytes[pos] ^= 1 << rng.random_range(0..8);
        }
        fs::write(&target, &bytes).unwrap();
        let salvaged = dir.path().join(format!("s{trial}"));
        copy_dir(&work, &salvaged);

        let is_last = seg == last_seg;
        // Damage in the zero-filled space after the last frame touches no entry.
        let in_zero_tail = is_last && pos as u64 >= last_end;
        // The frame the damage falls in (None: the segment header).
        let damaged = lay
            .frames
            .iter()
            .find(|(p, s, e, _)| *p == seg && (pos as u64) >= *s && (pos as u64) < *e)
            .map(|f| f.3);
        let plain = SegmentLog::open(&work, small(), None);
        check_salvage(trial, &salvaged, &entries, damaged, plain.is_err());
        match plain {
            Ok((log, _)) => {
                let got = read_all(&log);
                assert_eq!(
                    got,
                    entries[..got.len()].to_vec(),
                    "trial {trial}: not a prefix"
                );
                let kept_at_least = match damaged {
                    Some(idx) => idx - 1,
                    None => 0,
                };
                assert!(
                    got.len() as u64 >= kept_at_least,
                    "trial {trial}: lost frames before the damage ({} < {kept_at_least})",
                    got.len()
                );
                assert!(
                    is_last,
                    "trial {trial}: damage in a sealed segment went unreported"
                );
                if in_zero_tail {
                    assert_eq!(
                        got, entries,
                        "trial {trial}: damage after the frames lost one"
                    );
                } else if !cut {
                    assert_eq!(
                        damaged,
                        Some(entries.len() as u64),
                        "trial {trial}: a flip before the tail was cut off as if torn"
                    );
                }
                ok_runs += 1;
            }
            Err(StorageError::Corruption { .. }) => {
                assert!(
                    !(cut && is_last),
                    "trial {trial}: a cut of the last segment is a torn write, not corruption"
                );
                corrupt_runs += 1;
            }
            Err(e) => panic!("trial {trial}: unexpected error {e}"),
        }
        fs::remove_dir_all(&work).unwrap();
    }
    assert!(
        ok_runs > 50 && corrupt_runs > 50,
        "ok {ok_runs}, corrupt {corrupt_runs}"
    );
}

/// Salvage mode on the same damage: the open always succeeds with a prefix holding every frame
/// before the damage; damage is reported exactly when the plain open refused the log, with the
/// first index it dropped and evidence of how far the log reached; the cut log takes appends
/// and then reopens cleanly.
fn check_salvage(
    trial: usize,
    dir: &Path,
    entries: &[(u64, Vec<u8>)],
    damaged: Option<u64>,
    refused: bool,
) {
    let (mut log, report) = SegmentLog::open_salvaging(dir, small(), None)
        .unwrap_or_else(|e| panic!("trial {trial}: salvage failed: {e}"));
    let got = read_all(&log);
    assert_eq!(
        got,
        entries[..got.len()].to_vec(),
        "trial {trial}: salvage kept a non-prefix"
    );
    let kept_at_least = damaged.map_or(0, |idx| idx - 1);
    assert!(
        got.len() as u64 >= kept_at_least,
        "trial {trial}: salvage lost frames before the damage"
    );
    assert_eq!(
        report.damage.is_some(),
        refused,
        "trial {trial}: {report:?}"
    );
    if let Some(d) = &report.damage {
        assert_eq!(
            d.first_lost_index,
            got.len() as u64 + 1,
            "trial {trial}: {d:?}"
        );
        if let Some(seen) = d.last_index_seen {
            assert!(
                seen >= d.first_lost_index && seen <= entries.len() as u64,
                "trial {trial}: {d:?}"
            );
        }
    }
    let next = got.len() as u64 + 1;
    let more = vec![(next, payload(next, 40))];
    append_all(&mut log, &more);
    log.sync_all().unwrap();
    drop(log);
    let (log, report) = SegmentLog::open(dir, small(), None)
        .unwrap_or_else(|e| panic!("trial {trial}: a salvaged log did not reopen: {e}"));
    assert_eq!(report.damage, None);
    assert_eq!(read_all(&log).len() as u64, next, "trial {trial}");
    drop(log);
    fs::remove_dir_all(dir).unwrap();
}
