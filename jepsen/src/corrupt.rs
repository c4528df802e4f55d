//! Damage to a stopped node's files, for the `corrupt` nemesis (issue 18): bit flips in and
//! truncations of its segment files (a sealed segment, the active tail) and its sled metadata.
//! What each damage did is returned as evidence (file, what, where).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};

/// Bytes at the start of a segment file (its header): damage goes after them, into frames.
const SEGMENT_HEADER_BYTES: u64 = 16;

/// The kinds of damage, drawn at random.
pub const DAMAGE: [&str; 5] = [
    "flip-sealed",
    "truncate-sealed",
    "flip-tail",
    "truncate-tail",
    "flip-meta",
];

/// Every group's segment files under `data_dir`, oldest first per group.
fn segment_logs(data_dir: &Path) -> Vec<Vec<PathBuf>> {
    let Ok(groups) = std::fs::read_dir(data_dir.join("groups")) else {
        return Vec::new();
    };
    groups
        .filter_map(Result::ok)
        .filter_map(|g| {
            let mut segs: Vec<PathBuf> = std::fs::read_dir(g.path())
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect();
            segs.sort();
            (!segs.is_empty()).then_some(segs)
        })
        .collect()
}

/// The end of a segment's frames: past its last non-zero byte (the rest is space zero-filled
/// ahead of appends).
fn frames_end(path: &Path) -> std::io::Result<u64> {
    let data = std::fs::read(path)?;
    Ok(data
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1))
}

fn flip_bit(path: &Path, from: u64, to: u64, rng: &mut StdRng) -> std::io::Result<Value> {
    let offset = rng.random_range(from..to);
    let bit = rng.random_range(0..8u8);
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, offset)?;
    file.sync_all()?;
    Ok(json!({"offset": offset, "bit": bit}))
}

fn truncate(path: &Path, from: u64, to: u64, rng: &mut StdRng) -> std::io::Result<Value> {
    let len = rng.random_range(from..to);
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()?;
    Ok(json!({"truncated_to": len, "was": to}))
}

/// Damages one file of the (stopped) node whose data directory is `data_dir`, in the way
/// `kind` names. `None` when the node has no file that kind of damage applies to.
pub fn damage(data_dir: &Path, kind: &str, rng: &mut StdRng) -> Option<std::io::Result<Value>> {
    let logs = segment_logs(data_dir);
    let (path, from, to) = match kind {
        "flip-sealed" | "truncate-sealed" => {
            let with_sealed: Vec<&Vec<PathBuf>> = logs.iter().filter(|l| l.len() > 1).collect();
            let log = with_sealed.choose(rng)?;
            let path = log[..log.len() - 1].choose(rng)?.clone();
            let len = std::fs::metadata(&path).ok()?.len();
            (path, SEGMENT_HEADER_BYTES, len)
        }
        "flip-tail" | "truncate-tail" => {
            let with_frames: Vec<(PathBuf, u64)> = logs
                .iter()
                .filter_map(|l| {
                    let last = l.last()?.clone();
                    let end = frames_end(&last).ok()?;
                    (end > SEGMENT_HEADER_BYTES).then_some((last, end))
                })
                .collect();
            let (path, end) = with_frames.choose(rng)?.clone();
            (path, SEGMENT_HEADER_BYTES, end)
        }
        _ => {
            let files: Vec<(PathBuf, u64)> = std::fs::read_dir(data_dir.join("meta"))
                .ok()?
                .filter_map(Result::ok)
                .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
                .filter(|(_, m)| m.is_file() && m.len() > 0)
                .map(|(p, m)| (p, m.len()))
                .collect();
            let (path, len) = files.choose(rng)?.clone();
            (path, 0, len)
        }
    };
    if from >= to {
        return None;
    }
    let done = if kind.starts_with("flip") {
        flip_bit(&path, from, to, rng)
    } else {
        truncate(&path, from, to, rng)
    };
    let file = path
        .strip_prefix(data_dir)
        .unwrap_or(&path)
        .display()
        .to_string();
    Some(done.map(|mut ev| {
        ev["file"] = json!(file);
        ev["damage"] = json!(kind);
        ev
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn segment(dir: &Path, group: u64, base: u64, frames: &[u8], zero_tail: usize) {
        let g = dir.join("groups").join(format!("{group:020}"));
        std::fs::create_dir_all(&g).unwrap();
        let mut bytes = b"MILLRSEG\x01\0\0\0\0\0\0\0".to_vec();
        bytes.extend_from_slice(frames);
        bytes.extend(std::iter::repeat_n(0u8, zero_tail));
        std::fs::write(g.join(format!("{base:020}.seg")), bytes).unwrap();
    }

    #[test]
    fn each_damage_hits_the_file_it_names_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        segment(d, 7, 1, &[0xAA; 100], 0);
        segment(d, 7, 40, &[0xBB; 50], 4000);
        std::fs::create_dir_all(d.join("meta")).unwrap();
        std::fs::write(d.join("meta/db"), [0x55u8; 64]).unwrap();
        let mut rng = StdRng::seed_from_u64(1);

        let ev = damage(d, "flip-sealed", &mut rng).unwrap().unwrap();
        assert_eq!(
            ev["file"],
            "groups/00000000000000000007/00000000000000000001.seg"
        );
        let sealed = std::fs::read(d.join(ev["file"].as_str().unwrap())).unwrap();
        assert_eq!(
            sealed.iter().filter(|b| **b != 0xAA).count(),
            16 + 1,
            "header + one byte"
        );

        let ev = damage(d, "truncate-tail", &mut rng).unwrap().unwrap();
        assert_eq!(
            ev["file"],
            "groups/00000000000000000007/00000000000000000040.seg"
        );
        let cut = ev["truncated_to"].as_u64().unwrap();
        assert!((16..66).contains(&cut), "{ev}");
        assert_eq!(ev["was"], 66, "the frames' end, not the zero-filled space");

        let ev = damage(d, "flip-meta", &mut rng).unwrap().unwrap();
        assert_eq!(ev["file"], "meta/db");
        let meta = std::fs::read(d.join("meta/db")).unwrap();
        assert_eq!(meta.iter().filter(|b| **b != 0x55).count(), 1);

        // A node with a single segment per group has no sealed segment to damage.
        let other = tempfile::tempdir().unwrap();
        segment(other.path(), 3, 1, &[1; 10], 0);
        assert!(damage(other.path(), "truncate-sealed", &mut rng).is_none());
    }
}
