//! The application bytes of a shard group's Raft entry (`docs/storage-format.md`).
//!
//! Record batches are written in format version 2: a marker byte no protobuf `ShardCommand`
//! starts with, a version byte, the length of a small protobuf [`BatchHeader`] (arrival time and
//! the coalesced requests: record counts and idempotent producers), the header, then the records.
//! Apply and de-duplication decode the header alone; only readers decode the records. Seals,
//! retention marks and record batches written before version 2 are a `ShardCommand`.

use millrace_proto::storage::{
    shard_command::Command, BatchHeader, BatchRecord, BatchRequest, RecordBatch, ShardCommand,
};
use prost::Message;

/// First byte of a version-2 record batch entry. A `ShardCommand` encodes as a sequence of
/// fields, and no protobuf field tag is 0, so no `ShardCommand` starts with it.
pub const BATCH_MARKER: u8 = 0x00;
pub const BATCH_FORMAT_VERSION: u8 = 2;
/// Marker, version and the u32 header length.
const BATCH_PREFIX_BYTES: usize = 1 + 1 + 4;
/// Tag of `RecordBatch.records` (field 2, length-delimited).
const RECORDS_FIELD: u32 = 2;

/// A decoded shard entry.
#[derive(Debug)]
pub enum ShardEntry<'a> {
    /// A record batch: its header, and the still-encoded records.
    Batch {
        header: BatchHeader,
        records: &'a [u8],
    },
    /// A seal, a retention mark, or a record batch of format version 1.
    Command(Command),
    /// An empty command (never written; tolerated).
    Empty,
}

/// One request's part of a batch being encoded.
pub struct RequestRecords<'a> {
    pub records: &'a [BatchRecord],
    pub producer: Option<(&'a str, u64)>,
}

/// Encodes the requests' records as one record batch entry, header first.
pub fn encode_batch(arrival_timestamp_ms: i64, requests: &[RequestRecords<'_>]) -> Vec<u8> {
    let header = BatchHeader {
        arrival_timestamp_ms,
        requests: requests
            .iter()
            .map(|r| BatchRequest {
                records: r.records.len() as u32,
                producer_id: r.producer.map(|p| p.0.to_string()).unwrap_or_default(),
                producer_sequence: r.producer.map_or(0, |p| p.1),
            })
            .collect(),
    };
    let header_len = header.encoded_len();
    let records_len: usize = requests
        .iter()
        .flat_map(|r| r.records)
        .map(|r| {
            let n = r.encoded_len();
            prost::encoding::key_len(RECORDS_FIELD)
                + prost::encoding::encoded_len_varint(n as u64)
                + n
        })
        .sum();
    let mut out = Vec::with_capacity(BATCH_PREFIX_BYTES + header_len + records_len);
    out.push(BATCH_MARKER);
    out.push(BATCH_FORMAT_VERSION);
    out.extend_from_slice(&(header_len as u32).to_le_bytes());
    header
        .encode(&mut out)
        .expect("a Vec grows to fit the header");
    for r in requests.iter().flat_map(|r| r.records) {
        prost::encoding::message::encode(RECORDS_FIELD, r, &mut out);
    }
    debug_assert_eq!(out.len(), out.capacity());
    out
}

/// Encodes a seal or a retention mark.
pub fn encode_command(command: Command) -> Vec<u8> {
    ShardCommand {
        command: Some(command),
    }
    .encode_to_vec()
}

/// Decodes an entry's application bytes without decoding its records.
pub fn decode(data: &[u8]) -> Result<ShardEntry<'_>, String> {
    if data.first() == Some(&BATCH_MARKER) {
        if data.len() < BATCH_PREFIX_BYTES {
            return Err(format!("record batch of {} bytes is too short", data.len()));
        }
        if data[1] != BATCH_FORMAT_VERSION {
            return Err(format!("unknown record batch format {}", data[1]));
        }
        let header_len = u32::from_le_bytes(data[2..6].try_into().expect("4 bytes")) as usize;
        let Some(header) = data.get(BATCH_PREFIX_BYTES..BATCH_PREFIX_BYTES + header_len) else {
            return Err(format!(
                "record batch header of {header_len} bytes is cut short"
            ));
        };
        let header =
            BatchHeader::decode(header).map_err(|e| format!("bad record batch header: {e}"))?;
        return Ok(ShardEntry::Batch {
            header,
            records: &data[BATCH_PREFIX_BYTES + header_len..],
        });
    }
    let command = ShardCommand::decode(data).map_err(|e| format!("bad shard command: {e}"))?;
    Ok(match command.command {
        Some(c) => ShardEntry::Command(c),
        None if data.is_empty() => ShardEntry::Empty,
        // Bytes that hold no command this version knows: one a newer version added (protobuf
        // skips a field it does not know), never to be taken for an empty entry.
        None => {
            return Err(format!(
                "shard command of a kind this version does not know ({} bytes)",
                data.len()
            ))
        }
    })
}

/// A record batch as readers see it, whatever its format version.
pub struct DecodedBatch {
    pub arrival_timestamp_ms: i64,
    pub records: Vec<BatchRecord>,
}

/// Decodes the records of a record batch entry; `None` for entries that hold no records.
/// Record data are slices of `data` (no copy).
pub fn decode_records(data: &bytes::Bytes) -> Result<Option<DecodedBatch>, String> {
    Ok(match decode(data)? {
        ShardEntry::Batch { header, records } => {
            let body = RecordBatch::decode(data.slice_ref(records))
                .map_err(|e| format!("bad record batch: {e}"))?;
            let counted: u64 = header.requests.iter().map(|r| r.records as u64).sum();
            if counted != body.records.len() as u64 {
                return Err(format!(
                    "record batch header counts {counted} records, the batch holds {}",
                    body.records.len()
                ));
            }
            Some(DecodedBatch {
                arrival_timestamp_ms: header.arrival_timestamp_ms,
                records: body.records,
            })
        }
        ShardEntry::Command(Command::Put(batch)) => Some(DecodedBatch {
            arrival_timestamp_ms: batch.arrival_timestamp_ms,
            records: batch.records,
        }),
        ShardEntry::Command(_) | ShardEntry::Empty => None,
    })
}

/// The arrival time of a record batch entry (its header only), `None` for other entries.
pub fn arrival_of(data: &[u8]) -> Result<Option<i64>, String> {
    Ok(match decode(data)? {
        ShardEntry::Batch { header, .. } => Some(header.arrival_timestamp_ms),
        ShardEntry::Command(Command::Put(batch)) => Some(batch.arrival_timestamp_ms),
        ShardEntry::Command(_) | ShardEntry::Empty => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::storage::{RetentionMark, Seal};

    #[test]
    fn a_command_of_an_unknown_kind_is_an_error_not_an_empty_entry() {
        // Field 4 of ShardCommand, as a newer version might add to its `command` oneof.
        let newer = [0x22, 0x02, 0x08, 0x01];
        let Err(e) = decode(&newer) else {
            panic!("an unknown command must be refused")
        };
        assert!(e.contains("does not know"), "{e}");
        assert!(matches!(decode(&[]), Ok(ShardEntry::Empty)));
    }

    fn record(key: &str, data: &[u8]) -> BatchRecord {
        BatchRecord {
            partition_key: key.into(),
            data: bytes::Bytes::copy_from_slice(data),
            hash_key: vec![7; 16],
        }
    }

    #[test]
    fn a_batch_round_trips_and_its_header_decodes_alone() {
        let a = [record("a", b"one"), record("b", b"two")];
        let b = [record("c", &[0u8; 3000])];
        let bytes = encode_batch(
            42,
            &[
                RequestRecords {
                    records: &a,
                    producer: None,
                },
                RequestRecords {
                    records: &b,
                    producer: Some(("p", 9)),
                },
            ],
        );
        assert_eq!(bytes[0], BATCH_MARKER);
        let ShardEntry::Batch { header, .. } = decode(&bytes).unwrap() else {
            panic!("not a batch");
        };
        assert_eq!(header.arrival_timestamp_ms, 42);
        let counts: Vec<u32> = header.requests.iter().map(|r| r.records).collect();
        assert_eq!(counts, [2, 1]);
        assert_eq!(header.requests[1].producer_id, "p");
        assert_eq!(header.requests[1].producer_sequence, 9);
        let decoded = decode_records(&bytes.clone().into()).unwrap().unwrap();
        assert_eq!(decoded.records, [a.to_vec(), b.to_vec()].concat());
        assert_eq!(arrival_of(&bytes).unwrap(), Some(42));
        // A header that claims more records than the batch holds is refused.
        let mut bad = bytes.clone();
        let cut = bad.len() - 3010;
        bad.truncate(cut);
        assert!(decode_records(&bad.into()).is_err());
        assert!(decode(&bytes[..4]).is_err());
    }

    #[test]
    fn version_1_entries_still_decode() {
        let v1 = ShardCommand {
            command: Some(Command::Put(RecordBatch {
                arrival_timestamp_ms: 5,
                records: vec![record("k", b"v")],
                producer_id: String::new(),
                producer_sequence: 0,
            })),
        }
        .encode_to_vec();
        assert_ne!(v1[0], BATCH_MARKER);
        let decoded = decode_records(&v1.clone().into()).unwrap().unwrap();
        assert_eq!(decoded.arrival_timestamp_ms, 5);
        assert_eq!(decoded.records, [record("k", b"v")]);
        for c in [
            Command::Seal(Seal {}),
            Command::RetentionMark(RetentionMark { upto_index: 3 }),
        ] {
            let bytes = encode_command(c.clone());
            assert_ne!(bytes[0], BATCH_MARKER);
            assert!(matches!(decode(&bytes).unwrap(), ShardEntry::Command(d) if d == c));
            assert!(decode_records(&bytes.clone().into()).unwrap().is_none());
        }
    }
}
