//! Reading an action's input the way Kinesis validates it: every member is checked against its
//! documented constraint, and all violations are reported together in Kinesis's words
//! (`2 validation errors detected: Value 'x' at 'streamName' failed to satisfy constraint: …`).
//! A member of the wrong JSON type is a `SerializationException`, as in Kinesis.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use super::KinesisError;

pub const NAME_PATTERN: &str = "[a-zA-Z0-9_.-]+";
pub const STREAM_ARN_PATTERN: &str = "arn:aws.*:kinesis:.*:\\d{12}:stream/\\S+";

/// `[a-zA-Z0-9_.-]+`, the pattern of stream, shard and consumer names.
pub fn is_name(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `arn:aws.*:kinesis:.*:\d{12}:stream/\S+`.
pub fn is_stream_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("arn:aws") else {
        return false;
    };
    let Some((head, name)) = rest.split_once(":stream/") else {
        return false;
    };
    let account = head.rsplit(':').next().unwrap_or("");
    head.contains(":kinesis:")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && !name.chars().any(char::is_whitespace)
}

/// A pattern constraint: its text (for messages) and its matcher.
pub type Pattern<'p> = (&'p str, fn(&str) -> bool);

/// One object of the request (the whole input, or a nested member) being read.
pub struct Input<'a> {
    members: &'a Map<String, Value>,
    /// Where this object sits, for messages: "" or e.g. "records.3.member.".
    path: String,
    /// CBOR input: integer timestamps are epoch milliseconds.
    cbor: bool,
    violations: Vec<String>,
    serialization: Option<String>,
}

/// A member name in messages: `StreamName` → `streamName`.
fn field_path(path: &str, member: &str) -> String {
    let mut chars = member.chars();
    let first = chars.next().map(|c| c.to_ascii_lowercase());
    format!(
        "{path}{}{}",
        first.map(String::from).unwrap_or_default(),
        chars.as_str()
    )
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        Value::Null => "null".into(),
        other => format!("'{other}'"),
    }
}

impl<'a> Input<'a> {
    pub fn new(members: &'a Map<String, Value>, cbor: bool) -> Input<'a> {
        Input {
            members,
            path: String::new(),
            cbor,
            violations: Vec::new(),
            serialization: None,
        }
    }

    fn violation(&mut self, member: &str, value: &Value, constraint: &str) {
        self.violations.push(format!(
            "Value {} at '{}' failed to satisfy constraint: Member must {constraint}",
            shown(value),
            field_path(&self.path, member)
        ));
    }

    fn wrong_type(&mut self, member: &str, expected: &str) {
        if self.serialization.is_none() {
            self.serialization = Some(format!(
                "{} must be {expected}",
                field_path(&self.path, member)
            ));
        }
    }

    /// The member's value, or None when it is absent or null (recording "must not be null"
    /// when required).
    fn get(&mut self, member: &str, required: bool) -> Option<&'a Value> {
        match self.members.get(member) {
            None | Some(Value::Null) => {
                if required {
                    self.violation(member, &Value::Null, "not be null");
                }
                None
            }
            Some(v) => Some(v),
        }
    }

    fn get_str(&mut self, member: &str, required: bool) -> Option<&'a str> {
        match self.get(member, required)? {
            Value::String(s) => Some(s.as_str()),
            _ => {
                self.wrong_type(member, "a string");
                None
            }
        }
    }

    /// A string with length bounds (in characters) and optionally a pattern.
    pub fn string(
        &mut self,
        member: &str,
        required: bool,
        len: (usize, usize),
        pattern: Option<Pattern<'_>>,
    ) -> Option<String> {
        let s = self.get_str(member, required)?;
        let value = Value::String(s.to_string());
        let chars = s.chars().count();
        let mut ok = true;
        if chars < len.0 {
            self.violation(
                member,
                &value,
                &format!("have length greater than or equal to {}", len.0),
            );
            ok = false;
        }
        if chars > len.1 {
            self.violation(
                member,
                &value,
                &format!("have length less than or equal to {}", len.1),
            );
            ok = false;
        }
        if let Some((text, matches)) = pattern {
            if chars >= len.0 && !matches(s) {
                self.violation(
                    member,
                    &value,
                    &format!("satisfy regular expression pattern: {text}"),
                );
                ok = false;
            }
        }
        ok.then(|| s.to_string())
    }

    /// A name (`[a-zA-Z0-9_.-]+`, 1-`max` characters).
    pub fn name(&mut self, member: &str, required: bool, max: usize) -> Option<String> {
        self.string(member, required, (1, max), Some((NAME_PATTERN, is_name)))
    }

    /// One of a fixed set of strings.
    pub fn enumeration(&mut self, member: &str, required: bool, values: &[&str]) -> Option<String> {
        let s = self.get_str(member, required)?;
        if values.contains(&s) {
            Some(s.to_string())
        } else {
            self.violation(
                member,
                &Value::String(s.to_string()),
                &format!("satisfy enum value set: [{}]", values.join(", ")),
            );
            None
        }
    }

    /// An integer within `range` (inclusive).
    pub fn int(&mut self, member: &str, required: bool, range: (i64, i64)) -> Option<i64> {
        let v = self.get(member, required)?;
        let Some(n) = v.as_i64() else {
            self.wrong_type(member, "an integer");
            return None;
        };
        if n < range.0 {
            self.violation(
                member,
                v,
                &format!("have value greater than or equal to {}", range.0),
            );
            None
        } else if n > range.1 {
            self.violation(
                member,
                v,
                &format!("have value less than or equal to {}", range.1),
            );
            None
        } else {
            Some(n)
        }
    }

    pub fn boolean(&mut self, member: &str) -> Option<bool> {
        match self.get(member, false)? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(member, "a boolean");
                None
            }
        }
    }

    /// A blob (base64 in JSON, bytes in CBOR) of at most `max` bytes.
    pub fn blob(&mut self, member: &str, required: bool, max: usize) -> Option<Vec<u8>> {
        let s = self.get_str(member, required)?;
        let Ok(bytes) = STANDARD.decode(s) else {
            self.wrong_type(member, "base64-encoded binary data");
            return None;
        };
        if bytes.len() > max {
            let violation = too_long(&field_path(&self.path, member), max);
            self.violations.push(violation);
            return None;
        }
        Some(bytes)
    }

    /// A timestamp as epoch milliseconds: JSON carries epoch seconds (with a fraction); CBOR
    /// from the Java SDK carries epoch milliseconds.
    pub fn timestamp(&mut self, member: &str, required: bool) -> Option<i64> {
        let v = self.get(member, required)?;
        let ms = match v {
            Value::Number(n) if self.cbor && n.is_i64() => n.as_i64(),
            Value::Number(n) => n.as_f64().map(|secs| (secs * 1000.0).round() as i64),
            _ => None,
        };
        if ms.is_none() {
            self.wrong_type(member, "a timestamp (epoch seconds)");
        }
        ms
    }

    /// A list with at most `max` (and at least `min`) items.
    pub fn list(
        &mut self,
        member: &str,
        required: bool,
        len: (usize, usize),
    ) -> Option<&'a Vec<Value>> {
        let v = self.get(member, required)?;
        let Value::Array(items) = v else {
            self.wrong_type(member, "a list");
            return None;
        };
        if items.len() < len.0 {
            self.violation(
                member,
                v,
                &format!("have length greater than or equal to {}", len.0),
            );
            return None;
        }
        if items.len() > len.1 {
            self.violation(
                member,
                v,
                &format!("have length less than or equal to {}", len.1),
            );
            return None;
        }
        Some(items)
    }

    /// A list of strings.
    pub fn strings(
        &mut self,
        member: &str,
        required: bool,
        len: (usize, usize),
    ) -> Option<Vec<String>> {
        let items = self.list(member, required, len)?;
        let strings: Option<Vec<String>> =
            items.iter().map(|v| v.as_str().map(String::from)).collect();
        if strings.is_none() {
            self.wrong_type(member, "a list of strings");
        }
        strings
    }

    /// A string-to-string map.
    pub fn string_map(
        &mut self,
        member: &str,
        required: bool,
        len: (usize, usize),
    ) -> Option<Vec<(String, String)>> {
        let v = self.get(member, required)?;
        let Value::Object(map) = v else {
            self.wrong_type(member, "a map");
            return None;
        };
        let pairs: Option<Vec<(String, String)>> = map
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
        let Some(pairs) = pairs else {
            self.wrong_type(member, "a map of strings");
            return None;
        };
        if pairs.len() < len.0 || pairs.len() > len.1 {
            self.violation(
                member,
                v,
                &format!("have between {} and {} entries", len.0, len.1),
            );
            return None;
        }
        Some(pairs)
    }

    /// A nested object, read with `read`; its violations join this input's.
    pub fn nested<T>(
        &mut self,
        member: &str,
        required: bool,
        read: impl FnOnce(&mut Input<'a>) -> T,
    ) -> Option<T> {
        let v = self.get(member, required)?;
        let Value::Object(map) = v else {
            self.wrong_type(member, "a structure");
            return None;
        };
        let path = format!("{}.", field_path(&self.path, member));
        Some(self.within(map, path, read))
    }

    /// Reads every object of a list member with `read` (paths `member.N.member.x`, 1-based).
    pub fn each<T>(
        &mut self,
        member: &str,
        items: &'a [Value],
        mut read: impl FnMut(&mut Input<'a>) -> T,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Value::Object(map) = item else {
                self.wrong_type(member, "a list of structures");
                continue;
            };
            let path = format!("{}.{}.member.", field_path(&self.path, member), i + 1);
            out.push(self.within(map, path, &mut read));
        }
        out
    }

    fn within<T>(
        &mut self,
        map: &'a Map<String, Value>,
        path: String,
        read: impl FnOnce(&mut Input<'a>) -> T,
    ) -> T {
        let mut inner = Input {
            members: map,
            path,
            cbor: self.cbor,
            violations: Vec::new(),
            serialization: None,
        };
        let out = read(&mut inner);
        self.violations.append(&mut inner.violations);
        if self.serialization.is_none() {
            self.serialization = inner.serialization;
        }
        out
    }

    /// The stream a request names by `StreamName` or `StreamARN` (both optional; one needed).
    pub fn stream(&mut self) -> Option<String> {
        let (name, arn) = self.stream_members();
        arn.or(name)
    }

    /// `StreamName` and `StreamARN`, each if given (for actions that say which one was).
    pub fn stream_members(&mut self) -> (Option<String>, Option<String>) {
        let name = self.name("StreamName", false, 128);
        let arn = self.string(
            "StreamARN",
            false,
            (1, 2048),
            Some((STREAM_ARN_PATTERN, is_stream_arn)),
        );
        (name, arn)
    }

    /// Ends reading: any violation becomes the action's error.
    pub fn finish(self) -> Result<(), KinesisError> {
        if let Some(message) = self.serialization {
            return Err(KinesisError::client("SerializationException", message));
        }
        match self.violations.is_empty() {
            true => Ok(()),
            false => Err(validation_error(&self.violations)),
        }
    }
}

/// Kinesis's ValidationException for model constraints that `violations` break (each
/// "Value at 'path' failed to satisfy constraint: ...").
pub fn validation_error(violations: &[String]) -> KinesisError {
    let n = violations.len();
    KinesisError::client(
        "ValidationException",
        format!(
            "{n} validation error{} detected: {}",
            if n == 1 { "" } else { "s" },
            violations.join("; ")
        ),
    )
}

/// The violation of a blob's length constraint at `path`.
pub fn too_long(path: &str, max: usize) -> String {
    format!("Value at '{path}' failed to satisfy constraint: Member must have length less than or equal to {max}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: &Value) -> Input<'_> {
        Input::new(v.as_object().unwrap(), false)
    }

    #[test]
    fn violations_name_the_member_and_constraint_like_kinesis() {
        let v = json!({"StreamName": "bad name!", "ShardCount": 0});
        let mut i = input(&v);
        assert_eq!(i.name("StreamName", true, 128), None);
        assert_eq!(i.int("ShardCount", true, (1, 100_000)), None);
        assert_eq!(i.name("Missing", true, 128), None);
        let e = i.finish().unwrap_err();
        assert_eq!(e.type_name, "ValidationException");
        assert_eq!(
            e.message,
            "3 validation errors detected: \
             Value 'bad name!' at 'streamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+; \
             Value '0' at 'shardCount' failed to satisfy constraint: Member must have value greater than or equal to 1; \
             Value null at 'missing' failed to satisfy constraint: Member must not be null"
        );
    }

    #[test]
    fn nested_members_carry_their_path() {
        let v = json!({"Records": [{"Data": "aGk=", "PartitionKey": "k"}, {"Data": "aGk="}]});
        let mut i = input(&v);
        let items = i.list("Records", true, (1, 500)).unwrap();
        let keys = i.each("Records", items, |r| {
            r.string("PartitionKey", true, (1, 256), None)
        });
        assert_eq!(keys, vec![Some("k".to_string()), None]);
        let e = i.finish().unwrap_err();
        assert!(
            e.message.contains("at 'records.2.member.partitionKey'"),
            "{}",
            e.message
        );
    }

    #[test]
    fn wrong_types_are_serialization_errors() {
        let v = json!({"ShardCount": "three"});
        let mut i = input(&v);
        assert_eq!(i.int("ShardCount", true, (1, 10)), None);
        assert_eq!(i.finish().unwrap_err().type_name, "SerializationException");
    }

    #[test]
    fn timestamps_are_seconds_in_json_and_milliseconds_in_cbor() {
        let v = json!({"T": 1700000000.5});
        assert_eq!(input(&v).timestamp("T", true), Some(1_700_000_000_500));
        let v = json!({"T": 1_700_000_000_500i64});
        let mut cbor = Input::new(v.as_object().unwrap(), true);
        assert_eq!(cbor.timestamp("T", true), Some(1_700_000_000_500));
    }

    #[test]
    fn stream_arns_match_the_kinesis_pattern() {
        assert!(is_stream_arn(
            "arn:aws:kinesis:us-east-1:123456789012:stream/s"
        ));
        assert!(!is_stream_arn("arn:aws:kinesis:us-east-1:1234:stream/s"));
        assert!(!is_stream_arn("arn:aws:sqs:us-east-1:123456789012:queue/s"));
        let v = json!({"StreamARN": "arn:aws:kinesis:us-east-1:123456789012:stream/orders"});
        let mut i = input(&v);
        assert_eq!(
            i.stream().as_deref(),
            Some("arn:aws:kinesis:us-east-1:123456789012:stream/orders")
        );
    }
}
