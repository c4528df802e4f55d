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

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{self, HeaderCheck, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use super::{sync_dir, RecoveryReport, Segment};
use crate::error::{StorageError, StorageResult};

pub(super) fn recover(
    dir: &Path,
    purged: Option<u64>,
) -> StorageResult<(Vec<Segment>, RecoveryReport)> {
    let mut report = RecoveryReport::default();
    let files = list_segment_files(dir)?;
    let count = files.len();
    let mut segments: Vec<Segment> = Vec::with_capacity(count);
    for (i, (base, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let (seg, torn) = scan_segment(base, path, is_last)?;
        report.torn_bytes_truncated += torn;
        segments.push(seg);
    }
    // Drop what the caller has already purged (the last segment stays: it holds the position).
    if let Some(p) = purged {
        while segments.len() > 1 && segments[0].last_index().is_none_or(|last| last <= p) {
            let seg = segments.remove(0);
            fs::remove_file(&seg.path)
                .map_err(|e| StorageError::io("remove", seg.path.display(), e))?;
            report.segments_deleted += 1;
        }
        if let Some(first) = segments.first() {
            if first.last_index().is_some_and(|last| last > p) && first.base > p + 1 {
                return Err(corruption(
                    &first.path,
                    0,
                    format!(
                        "log resumes at index {} but only entries up to {p} were purged",
                        first.base
                    ),
                ));
            }
        }
    }
    check_contiguous(&segments)?;
    if report.segments_deleted > 0 {
        sync_dir(dir)?;
    }
    report.segments = segments.len();
    report.entries = segments.iter().map(|s| s.offsets.len() as u64).sum();
    Ok((segments, report))
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

/// Scans one segment. Returns it and the number of torn-tail bytes cut off.
fn scan_segment(base: u64, path: PathBuf, is_last: bool) -> StorageResult<(Segment, u64)> {
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
            return Ok((seg, bytes.len() as u64));
        }
        HeaderCheck::Unwritten => return Err(corruption(&seg.path, 0, "segment header missing")),
        HeaderCheck::Invalid(reason) => return Err(corruption(&seg.path, 0, reason)),
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
            return Ok((seg, 0));
        }
        if !is_last {
            return Err(corruption(
                &seg.path,
                pos as u64,
                format!("sealed segment: {problem}"),
            ));
        }
        if let Some(at) = find_valid_frame(&bytes, pos + 1) {
            return Err(corruption(
                &seg.path,
                pos as u64,
                format!(
                    "{problem}; a valid frame follows at byte {at}, so this is not a torn write"
                ),
            ));
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
        return Ok((seg, torn));
    }
    seg.end = pos as u64;
    seg.zeroed = pos as u64;
    Ok((seg, 0))
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

fn check_contiguous(segments: &[Segment]) -> StorageResult<()> {
    for pair in segments.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        match prev.last_index() {
            Some(last) if last + 1 == next.base => {}
            Some(last) => {
                return Err(corruption(
                    &next.path,
                    0,
                    format!(
                        "segment starts at index {} but the previous one ends at {last}",
                        next.base
                    ),
                ))
            }
            None => return Err(corruption(&prev.path, 0, "sealed segment holds no entries")),
        }
    }
    Ok(())
}
