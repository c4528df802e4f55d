//! The fsync probe: how many 4 KiB write + fdatasync pairs the disk under test completes in one
//! second. This machine's disk flips between a fast and a slow fsync mode; the probe before and
//! after each round says which mode the round ran in.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
pub struct Probe {
    pub per_second: f64,
    pub mean_ms: f64,
}

pub fn fsync_probe(dir: &Path) -> anyhow::Result<Probe> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(Probe {
        per_second: n as f64 / secs,
        mean_ms: secs * 1000.0 / n.max(1) as f64,
    })
}
