//! Stream tags with Kinesis's rules (Kinesis Data Streams "Tagging your streams"):
//! at most 50 tags per stream; keys of 1–128 and values of 0–256 characters drawn from Unicode
//! letters, digits, white space and `_ . / = + - % @`; keys starting with `aws:` are reserved.

use std::collections::BTreeMap;

pub use millrace_proto::limits::TAGS_PER_STREAM_MAX;
pub const TAG_KEY_CHARS_MAX: usize = 128;
pub const TAG_VALUE_CHARS_MAX: usize = 256;

fn allowed(c: char) -> bool {
    c.is_alphanumeric() || c.is_whitespace() || "_./=+-%@:".contains(c)
}

/// Checks one tag key and value.
pub fn validate_tag(key: &str, value: &str) -> Result<(), String> {
    let key_chars = key.chars().count();
    if key_chars == 0 || key_chars > TAG_KEY_CHARS_MAX {
        return Err(format!(
            "tag key {key:?} has {key_chars} characters; it must have 1-{TAG_KEY_CHARS_MAX}"
        ));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(format!("tag key {key:?} uses the reserved prefix aws:"));
    }
    let value_chars = value.chars().count();
    if value_chars > TAG_VALUE_CHARS_MAX {
        return Err(format!(
            "tag value for key {key:?} has {value_chars} characters; at most {TAG_VALUE_CHARS_MAX} are allowed"
        ));
    }
    if let Some(c) = key.chars().chain(value.chars()).find(|c| !allowed(*c)) {
        return Err(format!(
            "tag {key:?} contains {c:?}; allowed are letters, digits, white space and _ . / = + - % @"
        ));
    }
    Ok(())
}

/// Why tags cannot be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagError {
    /// A key or value breaks the rules (the message says which).
    Invalid(String),
    /// The stream would have more than [`TAGS_PER_STREAM_MAX`] tags (this many).
    TooMany(usize),
}

/// The tags after adding `new` to `existing`, or why that is not allowed.
pub fn merged(
    existing: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, TagError> {
    for (k, v) in new {
        validate_tag(k, v).map_err(TagError::Invalid)?;
    }
    let mut out = existing.clone();
    out.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
    if out.len() > TAGS_PER_STREAM_MAX {
        return Err(TagError::TooMany(out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinesis_tag_rules() {
        assert!(validate_tag("team", "data platform").is_ok());
        assert!(validate_tag("cost-center/id", "42%@+=").is_ok());
        assert!(validate_tag("", "x").is_err());
        assert!(validate_tag(&"k".repeat(129), "").is_err());
        assert!(validate_tag("k", &"v".repeat(257)).is_err());
        assert!(validate_tag("aws:owner", "x").is_err());
        assert!(validate_tag("k", "semi;colon").is_err());
        let existing: BTreeMap<String, String> =
            (0..49).map(|i| (format!("k{i}"), String::new())).collect();
        let one: BTreeMap<String, String> = [("new".to_string(), "v".to_string())].into();
        assert_eq!(merged(&existing, &one).unwrap().len(), 50);
        let two: BTreeMap<String, String> =
            [("a".into(), "".into()), ("b".into(), "".into())].into();
        assert_eq!(merged(&existing, &two).unwrap_err(), TagError::TooMany(51));
        // Overwriting an existing key does not count twice.
        let same: BTreeMap<String, String> = [("k0".into(), "changed".into())].into();
        assert_eq!(merged(&existing, &same).unwrap()["k0"], "changed");
    }
}
