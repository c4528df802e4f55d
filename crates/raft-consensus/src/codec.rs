//! Layout of a Raft entry inside a segment-log frame payload (entry format version 1):
//!
//! ```text
//! u8  format version (1)
//! u64 LE term of the leader that created the entry
//! u64 LE node id of that leader
//! u8  kind: 0 blank, 1 normal, 2 membership
//! ..  normal: the request bytes as given (e.g. a protobuf record batch)
//!     membership: JSON of the openraft membership
//! ```
//! The log index is in the frame header, not repeated here.

use openraft::EntryPayload;

use crate::types::{log_id, Entry, Membership, Request};

pub const ENTRY_FORMAT_VERSION: u8 = 1;
const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const PREFIX_BYTES: usize = 1 + 8 + 8 + 1;

pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let (kind, body): (u8, std::borrow::Cow<'_, [u8]>) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, (&[][..]).into()),
        EntryPayload::Normal(r) => (KIND_NORMAL, r.0.as_ref().into()),
        EntryPayload::Membership(m) => (
            KIND_MEMBERSHIP,
            serde_json::to_vec(m).expect("membership serialises").into(),
        ),
    };
    let mut out = Vec::with_capacity(PREFIX_BYTES + body.len());
    out.push(ENTRY_FORMAT_VERSION);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

/// Decodes an entry stored at `index`; a normal entry's request is a slice of `bytes`.
pub fn decode_entry(index: u64, bytes: &bytes::Bytes) -> Result<Entry, String> {
    if bytes.len() < PREFIX_BYTES {
        return Err(format!("entry {index}: {} bytes is too short", bytes.len()));
    }
    if bytes[0] != ENTRY_FORMAT_VERSION {
        return Err(format!("entry {index}: unknown entry format {}", bytes[0]));
    }
    let term = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let node = u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes"));
    let body = &bytes[PREFIX_BYTES..];
    let payload = match bytes[17] {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(Request(bytes.slice(PREFIX_BYTES..))),
        KIND_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice::<Membership>(body)
                .map_err(|e| format!("entry {index}: bad membership: {e}"))?,
        ),
        k => return Err(format!("entry {index}: unknown entry kind {k}")),
    };
    Ok(Entry {
        log_id: log_id(term, node, index),
        payload,
    })
}

/// The log id of a stored entry without decoding its body.
pub fn decode_log_id(index: u64, bytes: &[u8]) -> Result<crate::types::LogId, String> {
    if bytes.len() < PREFIX_BYTES || bytes[0] != ENTRY_FORMAT_VERSION {
        return Err(format!("entry {index}: bad entry prefix"));
    }
    let term = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let node = u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes"));
    Ok(log_id(term, node, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn entries_round_trip() {
        let nodes: BTreeMap<u64, openraft::BasicNode> =
            [(1, openraft::BasicNode::new("a:1"))].into();
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(Request(bytes::Bytes::from_static(b"batch"))),
            EntryPayload::Membership(Membership::from(nodes)),
        ] {
            let e = Entry {
                log_id: log_id(3, 2, 17),
                payload,
            };
            let bytes = bytes::Bytes::from(encode_entry(&e));
            assert_eq!(decode_entry(17, &bytes).unwrap(), e);
            assert_eq!(decode_log_id(17, &bytes).unwrap(), e.log_id);
        }
        assert!(decode_entry(1, &bytes::Bytes::from_static(&[9, 0, 0])).is_err());
    }
}
