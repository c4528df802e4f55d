//! Frame and segment-header encoding (format version 1).
//!
//! ```text
//! segment header (16 bytes): magic "MILLRSEG" | format version u32 LE | reserved u32 (0)
//! frame header  (20 bytes): payload_len u32 LE | log index u64 LE | payload crc32c u32 LE
//!                           | header crc32c u32 LE (over the previous 16 bytes)
//! payload       (payload_len bytes)
//! ```
//!
//! The header has its own checksum so that a damaged length is detected before it is trusted.

pub const SEGMENT_MAGIC: &[u8; 8] = b"MILLRSEG";
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: u64 = 16;
pub const FRAME_HEADER_BYTES: usize = 20;
/// Largest payload one frame may carry. A Raft entry holds at most one write batch, which the API
/// bounds well below this (PutRecords: 5 MiB; a record: at most 10 MiB by stream setting).
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;

pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h
}

/// What a segment header says about itself.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    Valid,
    /// Shorter than a header, or all zero: a segment created just before a crash.
    Unwritten,
    Invalid(String),
}

pub fn check_segment_header(bytes: &[u8]) -> HeaderCheck {
    if bytes.len() < SEGMENT_HEADER_BYTES as usize || bytes.iter().all(|b| *b == 0) {
        return HeaderCheck::Unwritten;
    }
    if &bytes[..8] != SEGMENT_MAGIC {
        return HeaderCheck::Invalid("bad magic".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_FORMAT_VERSION {
        return HeaderCheck::Invalid(format!("unsupported segment format version {version}"));
    }
    HeaderCheck::Valid
}

/// Appends one encoded frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= FRAME_PAYLOAD_BYTES_MAX);
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start..start + 16]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: usize,
    pub index: u64,
    pub payload_crc: u32,
}

impl FrameHeader {
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_len
    }
}

/// Decodes a frame header, checking its own checksum and the payload limit.
pub fn decode_header(bytes: &[u8]) -> Result<FrameHeader, String> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(format!("incomplete frame header ({} bytes)", bytes.len()));
    }
    let stored = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..16]) != stored {
        return Err("frame header checksum mismatch".into());
    }
    let payload_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    if payload_len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(format!("frame payload length {payload_len} over the limit"));
    }
    Ok(FrameHeader {
        payload_len,
        index: u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")),
        payload_crc: u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")),
    })
}

/// Decodes the frame at the start of `bytes`, verifying both checksums.
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), String> {
    let header = decode_header(bytes)?;
    let end = header.frame_len();
    if bytes.len() < end {
        return Err(format!(
            "frame of {end} bytes runs past the {} available",
            bytes.len()
        ));
    }
    let payload = &bytes[FRAME_HEADER_BYTES..end];
    if crc32c::crc32c(payload) != header.payload_crc
        && !crate::calibration::is(crate::calibration::InjectedBug::IgnoreCrc)
    {
        return Err(format!(
            "payload checksum mismatch at log index {}",
            header.index
        ));
    }
    Ok((header, payload))
}

/// The byte offset of each frame of a segment file's bytes, in order, then the end of the last
/// one: where the frames that decode one after the other lie (for tools and tests that
/// damage or inspect a segment at a frame).
pub fn frame_offsets(segment: &[u8]) -> Vec<usize> {
    let mut at = SEGMENT_HEADER_BYTES as usize;
    let mut offsets = Vec::new();
    while let Ok((h, _)) = decode_frame(&segment[at.min(segment.len())..]) {
        offsets.push(at);
        at += h.frame_len();
    }
    offsets.push(at);
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, b"hello");
        let (h, p) = decode_frame(&buf).unwrap();
        assert_eq!(h.index, 42);
        assert_eq!(p, b"hello");
        assert_eq!(h.frame_len(), buf.len());
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, b"payload bytes");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(
                decode_frame(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn header_checks() {
        assert_eq!(check_segment_header(&segment_header()), HeaderCheck::Valid);
        assert_eq!(check_segment_header(&[0u8; 16]), HeaderCheck::Unwritten);
        assert_eq!(check_segment_header(&[1u8; 3]), HeaderCheck::Unwritten);
        assert!(matches!(
            check_segment_header(b"NOTASEGMENT_____"),
            HeaderCheck::Invalid(_)
        ));
    }
}
