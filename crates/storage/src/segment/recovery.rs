//! Opening a segment log after a clean stop or a crash at any byte.
//!
//! Rules (see `docs/storage-format.md`):
//! * segments are scanned in order of their base index; every frame must carry the next index;
//! * zero bytes after the last frame are space zero-filled ahead of appends: the last segment
//!   keeps them, a sealed one is cut to its frames (a crash can leave them while sealing);
//! * a damaged frame in the *last* segment with no valid frame anywhere after it is a torn write:
//!   the tail is cut off (logged) — the longest valid prefix survives;
//! * a damaged frame followed by any valid frame, or damage in a sealed (non-last) segment, cannot
//!   be explained by a crash: recovery fails with [`StorageError::Corruption`] and never skips it;
//! * segments wholly at or below the caller's purge point are deleted; a gap between the purge
//!   point and the remaining segments, or between segments, is corruption.
//!
//! In *salvage* mode ([`super::SegmentLog::open_salvaging`]) corruption does not fail the open:
//! the log is cut back to the valid prefix before the damage (the damaged segment truncated,
//! every later one deleted) and the damage is reported ([`LogDamage`]), so that the replica can be
//! rebuilt from its group's other replicas. Nothing after the damage is ever read or kept.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{self, HeaderCheck, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use super::{sync_dir, LogDamage, RecoveryReport, Segment};
use crate::error::{StorageError, StorageResult};

pub(super) fn recover(
    dir: &Path,
    purged: Option<u64>,
    salvage: bool,
) -> StorageResult<(Vec<Segment>, RecoveryReport)> {
    let mut report = RecoveryReport::default();
    let files = list_segment_files(dir)?;
    let count = files.len();
    let mut segments: Vec<Segment> = Vec::with_capacity(count);
    let mut files = files.into_iter().enumerate();
    while let Some((i, (base, path))) = files.next() {
        let is_last = i + 1 == count;
        let damage = match scan_segment(base, path.clone(), is_last)? {
            Ok((seg, torn)) => {
                report.torn_bytes_truncated += torn;
                segments.push(seg);
                None
            }
            Err(Damaged { error, .. }) if !salvage => return Err(error),
            Err(damaged) => Some(damaged),
        };
        if let Some(damaged) = damage {
            // Keep the valid prefix; everything from the damage on goes.
            let rest: Vec<(u64, PathBuf)> = files.by_ref().map(|(_, f)| f).collect();
            let last_seen = rest.iter().map(|(b, _)| *b).chain(damaged.last_seen).max();
            match damaged.keep {
                Some((mut seg, pos)) => {
                    seg.file
                        .set_len(pos)
                        .and_then(|_| seg.file.sync_data())
                        .map_err(|e| StorageError::io("truncate", seg.path.display(), e))?;
                    seg.end = pos;
                    seg.zeroed = pos;
                    segments.push(seg);
                }
                None => remove(&path, &mut report)?,
            }
            for (_, p) in &rest {
                remove(p, &mut report)?;
            }
            report.damage = Some(damage_of(damaged.error, damaged.first_lost, last_seen));
            break;
        }
    }
    // Drop what the caller has already purged (the last segment stays: it holds the position).
    if let Some(p) = purged {
        while segments.len() > 1 && segments[0].last_index().is_none_or(|last| last <= p) {
            let seg = segments.remove(0);
            remove(&seg.path, &mut report)?;
        }
        if let Some(first) = segments.first() {
            if first.last_index().is_some_and(|last| last > p) && first.base > p + 1 {
                let error = corruption(
                    &first.path,
                    0,
                    format!(
                        "log resumes at index {} but only entries up to {p} were purged",
                        first.base
                    ),
                );
                if !salvage {
                    return Err(error);
                }
                // Nothing after the purge point is readable: the whole log goes.
                let last_seen = segments.iter().filter_map(|s| s.last_index()).max();
                for seg in segments.drain(..) {
                    remove(&seg.path, &mut report)?;
                }
                report.damage = Some(damage_of(error, p + 1, last_seen));
            }
        }
    }
    if let Some(at) = first_gap(&segments) {
        let error = gap_error(&segments, at);
        if !salvage {
            return Err(error);
        }
        let last_seen = segments.iter().filter_map(|s| s.last_index()).max();
        let first_lost = segments[at - 1]
            .last_index()
            .map_or(segments[at - 1].base, |l| l + 1);
        for seg in segments.drain(at..) {
            remove(&seg.path, &mut report)?;
        }
        report.damage = Some(damage_of(error, first_lost, last_seen));
    }
    if report.segments_deleted > 0 {
        sync_dir(dir)?;
    }
    if let Some(d) = &report.damage {
        tracing::error!(
            dir = %dir.display(),
            first_lost_index = d.first_lost_index,
            last_index_seen = ?d.last_index_seen,
            damage = %d.reason,
            "segment log damaged: cut back to the entries before the damage"
        );
    }
    report.segments = segments.len();
    report.entries = segments.iter().map(|s| s.offsets.len() as u64).sum();
    Ok((segments, report))
}

fn remove(path: &Path, report: &mut RecoveryReport) -> StorageResult<()> {
    fs::remove_file(path).map_err(|e| StorageError::io("remove", path.display(), e))?;
    report.segments_deleted += 1;
    Ok(())
}

fn damage_of(error: StorageError, first_lost_index: u64, last_seen: Option<u64>) -> LogDamage {
    LogDamage {
        reason: error.to_string(),
        first_lost_index,
        last_index_seen: last_seen.filter(|l| *l >= first_lost_index),
    }
}

/// A segment recovery cannot explain by a crash.
struct Damaged {
    error: StorageError,
    /// The segment with its frames before the damage, and the byte to cut it at (salvage only);
    /// `None` when the segment is unusable from its header on.
    keep: Option<(Segment, u64)>,
    /// The first log index that is not kept.
    first_lost: u64,
    /// The highest log index a valid frame after the damage carries, if any.
    last_seen: Option<u64>,
}

/// The checksum-valid frame with the highest log index in `dir`'s segment files (index and
/// payload), read without changing anything: the evidence of how far a log reached, e.g. one
/// whose node metadata is lost. `None` when no frame is readable.
pub(super) fn last_frame_on_disk(dir: &Path) -> StorageResult<Option<(u64, Vec<u8>)>> {
    let mut last: Option<(u64, Vec<u8>)> = None;
    for (_, path) in list_segment_files(dir)? {
        let bytes = fs::read(&path).map_err(|e| StorageError::io("read", path.display(), e))?;
        if let Some((index, payload)) = last_valid_frame(&bytes, 0) {
            if last.as_ref().is_none_or(|(l, _)| index > *l) {
                last = Some((index, payload.to_vec()));
            }
        }
    }
    Ok(last)
}

fn list_segment_files(dir: &Path) -> StorageResult<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("list", dir.display(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir.display(), e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        let base = stem.parse::<u64>().map_err(|_| StorageError::Corruption {
            path: entry.path(),
            offset: 0,
            reason: "segment file name is not a log index".into(),
        })?;
        files.push((base, entry.path()));
    }
    files.sort_by_key(|(base, _)| *base);
    Ok(files)
}

fn corruption(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corruption {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Scans one segment. Returns it and the number of torn-tail bytes cut off, or the damage that
/// a crash cannot explain (nothing is changed on disk then).
fn scan_segment(
    base: u64,
    path: PathBuf,
    is_last: bool,
) -> StorageResult<Result<(Segment, u64), Damaged>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io("open", path.display(), e))?;
    let bytes = fs::read(&path).map_err(|e| StorageError::io("read", path.display(), e))?;
    let mut seg = Segment {
        base,
        path,
        file: Arc::new(file),
        offsets: Vec::new(),
        end: SEGMENT_HEADER_BYTES,
        zeroed: SEGMENT_HEADER_BYTES,
    };
    let unusable = |seg: &Segment, reason: String| Damaged {
        error: corruption(&seg.path, 0, reason),
        keep: None,
        first_lost: base,
        last_seen: last_valid_index(&bytes, 0),
    };
    match frame::check_segment_header(&bytes[..bytes.len().min(SEGMENT_HEADER_BYTES as usize)]) {
        HeaderCheck::Valid => {}
        HeaderCheck::Unwritten if is_last && header_torn(&bytes) => {
            // Created just before a crash: rewrite the header.
            let header = frame::segment_header();
            seg.file
                .set_len(0)
                .and_then(|_| seg.file.write_all_at(&header, 0))
                .and_then(|_| seg.file.sync_data())
                .map_err(|e| StorageError::io("rewrite", seg.path.display(), e))?;
            return Ok(Ok((seg, bytes.len() as u64)));
        }
        HeaderCheck::Unwritten => return Ok(Err(unusable(&seg, "segment header missing".into()))),
        HeaderCheck::Invalid(reason) => return Ok(Err(unusable(&seg, reason))),
    }
    let mut pos = SEGMENT_HEADER_BYTES as usize;
    let mut expected = base;
    while pos < bytes.len() {
        let problem = match frame::decode_frame(&bytes[pos..]) {
            Ok((header, _)) if header.index == expected => {
                seg.offsets.push(pos as u64);
                pos += header.frame_len();
                expected += 1;
                continue;
            }
            Ok((header, _)) => format!(
                "expected log index {expected}, frame holds {}",
                header.index
            ),
            Err(reason) => reason,
        };
        if bytes[pos..].iter().all(|b| *b == 0) {
            // Space zero-filled ahead of the frames (see `SegmentLog`), not a torn write. The
            // active segment keeps it; a sealed one is cut to its frames, as sealing does.
            seg.end = pos as u64;
            seg.zeroed = bytes.len() as u64;
            if !is_last {
                seg.cut_zero_tail()?;
                seg.file
                    .sync_data()
                    .map_err(|e| StorageError::io("sync", seg.path.display(), e))?;
            }
            return Ok(Ok((seg, 0)));
        }
        let damaged = |seg: Segment, reason: String| Damaged {
            error: corruption(&seg.path, pos as u64, reason),
            keep: Some((seg, pos as u64)),
            first_lost: expected,
            last_seen: last_valid_index(&bytes, pos + 1),
        };
        if !is_last {
            return Ok(Err(damaged(seg, format!("sealed segment: {problem}"))));
        }
        if let Some(at) = find_valid_frame(&bytes, pos + 1) {
            let reason = format!(
                "{problem}; a valid frame follows at byte {at}, so this is not a torn write"
            );
            return Ok(Err(damaged(seg, reason)));
        }
        let torn = (bytes.len() - pos) as u64;
        tracing::warn!(
            segment = %seg.path.display(),
            offset = pos,
            torn_bytes = torn,
            %problem,
            "cutting off a torn tail left by a crash"
        );
        seg.file
            .set_len(pos as u64)
            .and_then(|_| seg.file.sync_data())
            .map_err(|e| StorageError::io("truncate", seg.path.display(), e))?;
        seg.end = pos as u64;
        seg.zeroed = pos as u64;
        return Ok(Ok((seg, torn)));
    }
    seg.end = pos as u64;
    seg.zeroed = pos as u64;
    Ok(Ok((seg, 0)))
}

/// The highest log index carried by a checksum-valid frame at or after byte `from` (the
/// evidence of how far a damaged log reached).
fn last_valid_index(bytes: &[u8], from: usize) -> Option<u64> {
    last_valid_frame(bytes, from).map(|(index, _)| index)
}

/// The checksum-valid frame with the highest log index at or after byte `from`: its index and
/// payload.
fn last_valid_frame(bytes: &[u8], from: usize) -> Option<(u64, &[u8])> {
    let mut last: Option<(u64, &[u8])> = None;
    let mut at = from.max(SEGMENT_HEADER_BYTES as usize);
    while let Some(p) = find_valid_frame(bytes, at) {
        let (header, payload) = frame::decode_frame(&bytes[p..]).ok()?;
        if last.is_none_or(|(l, _)| header.index > l) {
            last = Some((header.index, payload));
        }
        at = p + header.frame_len().max(1);
    }
    last
}

/// A header cut short (or never written) by a crash: zeros, or a prefix of the real header.
fn header_torn(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
        || (bytes.len() < SEGMENT_HEADER_BYTES as usize
            && bytes == &frame::segment_header()[..bytes.len()])
}

/// The offset of the first complete, checksum-valid frame at or after `from`, if any.
fn find_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_BYTES)?;
    (from..=last_start).find(|&p| frame::decode_frame(&bytes[p..]).is_ok())
}

/// The position of the first segment that does not continue the one before it.
fn first_gap(segments: &[Segment]) -> Option<usize> {
    (1..segments.len()).find(|&i| {
        segments[i - 1]
            .last_index()
            .is_none_or(|last| last + 1 != segments[i].base)
    })
}

fn gap_error(segments: &[Segment], at: usize) -> StorageError {
    let (prev, next) = (&segments[at - 1], &segments[at]);
    match prev.last_index() {
        Some(last) => corruption(
            &next.path,
            0,
            format!(
                "segment starts at index {} but the previous one ends at {last}",
                next.base
            ),
        ),
        None => corruption(&prev.path, 0, "sealed segment holds no entries"),
    }
}
