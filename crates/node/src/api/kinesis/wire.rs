//! The two body encodings of the Kinesis API: `application/x-amz-json-1.1` (blobs as base64,
//! timestamps as epoch seconds with a fraction) and `application/x-amz-cbor-1.1` (blobs as byte
//! strings, timestamps as CBOR tag 1 over epoch milliseconds, as the Java SDK writes them).
//!
//! Requests are decoded into one JSON-shaped tree (`serde_json::Value`) that the actions read
//! through [`super::input::Input`]; responses are built as [`Out`], which keeps blobs and
//! timestamps typed until the encoding is chosen.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ciborium::value::Value as Cbor;
use serde_json::{Map, Number, Value};

pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";
pub const CBOR_CONTENT_TYPE: &str = "application/x-amz-cbor-1.1";

/// The encoding of one request, and of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Cbor,
}

impl Encoding {
    /// From the request's Content-Type (JSON unless it names CBOR; `application/json` and a
    /// missing header are accepted as JSON, as Kinesis does).
    pub fn from_content_type(content_type: Option<&str>) -> Encoding {
        match content_type {
            Some(ct) if ct.trim().starts_with(CBOR_CONTENT_TYPE) => Encoding::Cbor,
            _ => Encoding::Json,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON_CONTENT_TYPE,
            Encoding::Cbor => CBOR_CONTENT_TYPE,
        }
    }

    /// Decodes a request body into an object. An empty body is an empty object.
    pub fn decode(self, body: &[u8]) -> Result<Map<String, Value>, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        let value = match self {
            Encoding::Json => serde_json::from_slice::<Value>(body)
                .map_err(|e| format!("the request body is not valid JSON: {e}"))?,
            Encoding::Cbor => {
                let cbor: Cbor = ciborium::de::from_reader(body)
                    .map_err(|e| format!("the request body is not valid CBOR: {e}"))?;
                cbor_to_json(cbor)?
            }
        };
        match value {
            Value::Object(map) => Ok(map),
            _ => Err("the request body must be an object".into()),
        }
    }

    pub fn encode(self, out: &Out) -> Vec<u8> {
        match self {
            Encoding::Json => serde_json::to_vec(&out.to_json()).unwrap_or_default(),
            Encoding::Cbor => {
                let mut buf = Vec::new();
                // Writing into a Vec cannot fail.
                let _ = ciborium::ser::into_writer(&out.to_cbor(), &mut buf);
                buf
            }
        }
    }
}

/// CBOR in the JSON-shaped tree: byte strings become base64 text (what JSON carries for a
/// blob) and tagged epoch timestamps become epoch seconds as a float.
fn cbor_to_json(v: Cbor) -> Result<Value, String> {
    Ok(match v {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Integer(i) => {
            let i: i128 = i.into();
            match i64::try_from(i) {
                Ok(i) => Value::Number(i.into()),
                Err(_) => Value::String(i.to_string()),
            }
        }
        Cbor::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Cbor::Text(s) => Value::String(s),
        Cbor::Bytes(b) => Value::String(STANDARD.encode(b)),
        Cbor::Array(items) => Value::Array(
            items
                .into_iter()
                .map(cbor_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Cbor::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let Cbor::Text(k) = k else {
                    return Err("CBOR map keys must be text".into());
                };
                map.insert(k, cbor_to_json(v)?);
            }
            Value::Object(map)
        }
        // Tag 1: an epoch-based date; the Java SDK writes epoch milliseconds as an integer.
        Cbor::Tag(1, inner) => match *inner {
            Cbor::Integer(ms) => {
                let ms: i128 = ms.into();
                Number::from_f64(ms as f64 / 1000.0).map_or(Value::Null, Value::Number)
            }
            Cbor::Float(secs) => Number::from_f64(secs).map_or(Value::Null, Value::Number),
            _ => return Err("CBOR tag 1 must hold a number".into()),
        },
        Cbor::Tag(_, inner) => cbor_to_json(*inner)?,
        _ => return Err("unsupported CBOR value".into()),
    })
}

/// A response body before it is encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Blob(bytes::Bytes),
    /// Epoch milliseconds.
    Timestamp(i64),
    List(Vec<Out>),
    Map(Vec<(&'static str, Out)>),
}

impl Out {
    /// An object with the given members; members that are `Out::Null` are left out, as the
    /// SDKs expect absent optional members rather than nulls.
    pub fn map(members: Vec<(&'static str, Out)>) -> Out {
        Out::Map(
            members
                .into_iter()
                .filter(|(_, v)| *v != Out::Null)
                .collect(),
        )
    }

    pub fn str(s: impl Into<String>) -> Out {
        Out::Str(s.into())
    }

    /// `Str` when non-empty, else absent.
    pub fn opt_str(s: &str) -> Out {
        if s.is_empty() {
            Out::Null
        } else {
            Out::Str(s.to_string())
        }
    }

    pub fn strs<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Out {
        Out::List(items.into_iter().map(|s| Out::Str(s.into())).collect())
    }

    pub fn to_json(&self) -> Value {
        match self {
            Out::Null => Value::Null,
            Out::Bool(b) => Value::Bool(*b),
            Out::Int(i) => Value::Number((*i).into()),
            Out::Str(s) => Value::String(s.clone()),
            Out::Blob(b) => Value::String(STANDARD.encode(b)),
            Out::Timestamp(ms) => {
                Number::from_f64(*ms as f64 / 1000.0).map_or(Value::Null, Value::Number)
            }
            Out::List(items) => Value::Array(items.iter().map(Out::to_json).collect()),
            Out::Map(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    pub fn to_cbor(&self) -> Cbor {
        match self {
            Out::Null => Cbor::Null,
            Out::Bool(b) => Cbor::Bool(*b),
            Out::Int(i) => Cbor::Integer((*i).into()),
            Out::Str(s) => Cbor::Text(s.clone()),
            Out::Blob(b) => Cbor::Bytes(b.to_vec()),
            Out::Timestamp(ms) => Cbor::Tag(1, Box::new(Cbor::Integer((*ms).into()))),
            Out::List(items) => Cbor::Array(items.iter().map(Out::to_cbor).collect()),
            Out::Map(members) => Cbor::Map(
                members
                    .iter()
                    .map(|(k, v)| (Cbor::Text(k.to_string()), v.to_cbor()))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_blobs_are_base64_and_timestamps_seconds() {
        let out = Out::map(vec![
            ("Data", Out::Blob(bytes::Bytes::from_static(b"hi"))),
            ("At", Out::Timestamp(1_700_000_000_123)),
            ("Gone", Out::Null),
        ]);
        let v = out.to_json();
        assert_eq!(v["Data"], "aGk=");
        assert_eq!(v["At"].as_f64(), Some(1_700_000_000.123));
        assert!(v.get("Gone").is_none());
    }

    #[test]
    fn cbor_round_trips_blobs_and_tagged_millisecond_timestamps() {
        let out = Out::map(vec![
            ("Data", Out::Blob(vec![0, 255, 7].into())),
            ("At", Out::Timestamp(1_700_000_000_123)),
            ("N", Out::Int(-3)),
            ("L", Out::strs(["a", "b"])),
        ]);
        let bytes = Encoding::Cbor.encode(&out);
        // The timestamp is tag 1 (0xc1) over an integer.
        let cbor: Cbor = ciborium::de::from_reader(bytes.as_slice()).unwrap();
        let Cbor::Map(members) = &cbor else {
            panic!("not a map: {cbor:?}")
        };
        assert!(members.iter().any(|(k, v)| k.as_text() == Some("At")
            && matches!(v, Cbor::Tag(1, inner) if inner.as_integer() == Some(1_700_000_000_123i64.into()))));
        let decoded = Encoding::Cbor.decode(&bytes).unwrap();
        assert_eq!(decoded["Data"], STANDARD.encode([0u8, 255, 7]));
        assert_eq!(decoded["At"].as_f64(), Some(1_700_000_000.123));
        assert_eq!(decoded["N"], -3);
        assert_eq!(decoded["L"][1], "b");
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        assert!(Encoding::Json.decode(b"[1]").is_err());
        assert!(Encoding::Json.decode(b"{bad").is_err());
        assert!(Encoding::Cbor.decode(&[0xff, 0x00]).is_err());
        assert!(Encoding::Json.decode(b"").unwrap().is_empty());
        assert_eq!(
            Encoding::from_content_type(Some("application/x-amz-cbor-1.1")),
            Encoding::Cbor
        );
        assert_eq!(Encoding::from_content_type(None), Encoding::Json);
    }
}
