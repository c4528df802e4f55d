//! `application/vnd.amazon.eventstream` framing, as SubscribeToShard streams it over HTTP.
//!
//! A message is: total length (u32 BE), headers length (u32 BE), CRC32 of those 8 bytes, the
//! headers, the payload, and a CRC32 of everything before it. A header is a name length (u8),
//! the name, a value type (7: string), a value length (u16 BE) and the value.

pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";
const STRING_TYPE: u8 = 7;
const PRELUDE_BYTES: usize = 12;

/// Encodes one message with string headers.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.push(STRING_TYPE);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = PRELUDE_BYTES + head.len() + payload.len() + 4;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_be_bytes());
    msg.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&msg);
    msg.extend_from_slice(&prelude_crc.to_be_bytes());
    msg.extend_from_slice(&head);
    msg.extend_from_slice(payload);
    let crc = crc32fast::hash(&msg);
    msg.extend_from_slice(&crc.to_be_bytes());
    msg
}

/// An event message (`:message-type` event).
pub fn event(event_type: &str, content_type: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &[
            (":message-type", "event"),
            (":event-type", event_type),
            (":content-type", content_type),
        ],
        payload,
    )
}

/// An exception message (`:message-type` exception).
pub fn exception(exception_type: &str, content_type: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &[
            (":message-type", "exception"),
            (":exception-type", exception_type),
            (":content-type", content_type),
        ],
        payload,
    )
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes the first message of `buf`: Ok(None) when more bytes are needed, else the message
/// and the bytes it used. Checks both CRCs; only string headers are understood.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, String> {
    if buf.len() < PRELUDE_BYTES {
        return Ok(None);
    }
    let word = |at: usize| u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let total = word(0) as usize;
    let headers_len = word(4) as usize;
    if word(8) != crc32fast::hash(&buf[..8]) {
        return Err("prelude CRC mismatch".into());
    }
    if total < PRELUDE_BYTES + headers_len + 4 {
        return Err(format!("message length {total} is too small"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    if word(total - 4) != crc32fast::hash(&buf[..total - 4]) {
        return Err("message CRC mismatch".into());
    }
    let mut headers = Vec::new();
    let mut at = PRELUDE_BYTES;
    let end = PRELUDE_BYTES + headers_len;
    while at < end {
        let name_len = buf[at] as usize;
        let name = &buf
            .get(at + 1..at + 1 + name_len)
            .ok_or("truncated header")?;
        at += 1 + name_len;
        if buf.get(at) != Some(&STRING_TYPE) {
            return Err("only string headers are supported".into());
        }
        let len_bytes = buf.get(at + 1..at + 3).ok_or("truncated header")?;
        let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
        let value = buf.get(at + 3..at + 3 + len).ok_or("truncated header")?;
        at += 3 + len;
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    let payload = buf[end..total - 4].to_vec();
    Ok(Some((Message { headers, payload }, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_corruption_is_caught() {
        let msg = event(
            "SubscribeToShardEvent",
            "application/x-amz-json-1.1",
            b"{\"a\":1}",
        );
        let mut stream = msg.clone();
        stream.extend(exception(
            "ResourceNotFoundException",
            "application/x-amz-json-1.1",
            b"{}",
        ));
        let (first, used) = decode(&stream).unwrap().unwrap();
        assert_eq!(used, msg.len());
        assert_eq!(first.header(":event-type"), Some("SubscribeToShardEvent"));
        assert_eq!(first.header(":message-type"), Some("event"));
        assert_eq!(first.payload, b"{\"a\":1}");
        let (second, _) = decode(&stream[used..]).unwrap().unwrap();
        assert_eq!(
            second.header(":exception-type"),
            Some("ResourceNotFoundException")
        );
        assert_eq!(decode(&msg[..msg.len() - 1]).unwrap(), None);
        let mut bad = msg.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn frame_layout_matches_the_specification() {
        // An empty message: 16 bytes, total length 16, no headers, prelude CRC of the 8 bytes.
        let msg = encode(&[], b"");
        assert_eq!(msg.len(), 16);
        assert_eq!(&msg[..8], &[0, 0, 0, 16, 0, 0, 0, 0]);
        assert_eq!(msg[8..12], crc32fast::hash(&msg[..8]).to_be_bytes());
        // The published CRC of this exact message (AWS event stream test suite: "empty_message").
        assert_eq!(&msg[8..], &[0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98, 0xc8, 0xff]);
    }
}
