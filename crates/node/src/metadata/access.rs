//! Access keys, their policies and Kinesis resource policies, replicated in the metadata
//! group so every node enforces the same rules (issue 15, point 4).
//!
//! Stored in the metadata state (snapshot and log, JSON): `access.keys` (key id → secret and
//! creation time), `access.policies` (key id → [`Policy`]) and `access.resource_policies`
//! (ARN → the document as put). Secrets are kept so signatures can be checked; like the rest
//! of the data directory they are not encrypted at rest (docs/security.md says how to protect
//! the disk). Their `Debug` never shows them.

use std::collections::BTreeMap;

use millrace_security::policy::Policy;
use millrace_security::resource_policy::ResourcePolicy;
use serde::{Deserialize, Serialize};

use super::state::MetaResponse;

/// Access keys the cluster stores, beside the bootstrap keys of `--access-keys`.
pub const ACCESS_KEYS_MAX: usize = 1_000;

/// A secret access key. Serialised as itself (the metadata state must keep it); shown nowhere.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub secret: Secret,
    pub created_ms: i64,
}

/// A resource policy: the document as put (answered verbatim by GetResourcePolicy) and, parsed
/// from it, what is evaluated. A document that no longer parses (it was checked when put, so
/// only a change to the rules could cause this) denies everything: it fails closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResourcePolicy {
    /// The stream the ARN names (and the consumer, for a consumer ARN): the policy goes when
    /// they go.
    pub stream: String,
    #[serde(default)]
    pub consumer: Option<String>,
    #[serde(with = "document")]
    pub document: (String, Option<ResourcePolicy>),
}

impl StoredResourcePolicy {
    pub fn new(stream: String, consumer: Option<String>, text: String) -> StoredResourcePolicy {
        let parsed = ResourcePolicy::parse(&text).ok();
        StoredResourcePolicy {
            stream,
            consumer,
            document: (text, parsed),
        }
    }

    pub fn text(&self) -> &str {
        &self.document.0
    }

    /// `None` when the document no longer parses: treat as a deny of everything.
    pub fn parsed(&self) -> Option<&ResourcePolicy> {
        self.document.1.as_ref()
    }
}

mod document {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        d: &(String, Option<ResourcePolicy>),
        s: S,
    ) -> Result<S::Ok, S::Error> {
        d.0.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<(String, Option<ResourcePolicy>), D::Error> {
        let text = String::deserialize(d)?;
        let parsed = ResourcePolicy::parse(&text).ok();
        if parsed.is_none() {
            tracing::error!("a stored resource policy no longer parses; it denies every request");
        }
        Ok((text, parsed))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessState {
    #[serde(default)]
    pub keys: BTreeMap<String, StoredKey>,
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    #[serde(default)]
    pub resource_policies: BTreeMap<String, StoredResourcePolicy>,
}

/// Metadata commands of this module (inside `MetaCommand::Access`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessCommand {
    PutKey {
        key_id: String,
        secret: Secret,
        created_ms: i64,
    },
    /// Deletes the key and its policy.
    DeleteKey {
        key_id: String,
    },
    PutPolicy {
        key_id: String,
        policy: Policy,
    },
    DeletePolicy {
        key_id: String,
    },
    PutResourcePolicy {
        arn: String,
        policy: StoredResourcePolicy,
    },
    DeleteResourcePolicy {
        arn: String,
    },
}

impl AccessState {
    /// Applies one command. `stream_exists(stream, consumer)` says whether a resource policy's
    /// stream (and consumer) still exists.
    pub fn apply(
        &mut self,
        cmd: &AccessCommand,
        resource_exists: impl Fn(&str, Option<&str>) -> bool,
    ) -> MetaResponse {
        match cmd {
            AccessCommand::PutKey {
                key_id,
                secret,
                created_ms,
            } => {
                if self.keys.contains_key(key_id) {
                    return MetaResponse::ResourceInUse(format!(
                        "Access key {key_id} already exists"
                    ));
                }
                if self.keys.len() >= ACCESS_KEYS_MAX {
                    return MetaResponse::LimitExceeded(format!(
                        "the cluster already has {ACCESS_KEYS_MAX} access keys, the maximum"
                    ));
                }
                self.keys.insert(
                    key_id.clone(),
                    StoredKey {
                        secret: secret.clone(),
                        created_ms: *created_ms,
                    },
                );
                MetaResponse::Ok
            }
            AccessCommand::DeleteKey { key_id } => match self.keys.remove(key_id) {
                Some(_) => {
                    self.policies.remove(key_id);
                    MetaResponse::Ok
                }
                None => MetaResponse::ResourceNotFound(format!("Access key {key_id} not found")),
            },
            AccessCommand::PutPolicy { key_id, policy } => {
                if !self.keys.contains_key(key_id) {
                    return MetaResponse::ResourceNotFound(format!(
                        "Access key {key_id} not found"
                    ));
                }
                if let Err(e) = policy.validate() {
                    return MetaResponse::InvalidArgument(e);
                }
                self.policies.insert(key_id.clone(), policy.clone());
                MetaResponse::Ok
            }
            AccessCommand::DeletePolicy { key_id } => match self.policies.remove(key_id) {
                Some(_) => MetaResponse::Ok,
                None => {
                    MetaResponse::ResourceNotFound(format!("Access key {key_id} has no policy"))
                }
            },
            AccessCommand::PutResourcePolicy { arn, policy } => {
                if !resource_exists(&policy.stream, policy.consumer.as_deref()) {
                    return MetaResponse::ResourceNotFound(format!("Resource {arn} not found"));
                }
                if policy.parsed().is_none() {
                    return MetaResponse::InvalidArgument(format!(
                        "the policy for {arn} is not valid"
                    ));
                }
                self.resource_policies.insert(arn.clone(), policy.clone());
                MetaResponse::Ok
            }
            AccessCommand::DeleteResourcePolicy { arn } => {
                match self.resource_policies.remove(arn) {
                    Some(_) => MetaResponse::Ok,
                    None => MetaResponse::ResourceNotFound(format!(
                        "No resource policy found for resource ARN {arn}"
                    )),
                }
            }
        }
    }

    /// A stream (or one of its consumers, `Some(name)`) is gone: so are its resource policies.
    pub fn forget_resource(&mut self, stream: &str, consumer: Option<&str>) {
        self.resource_policies.retain(|_, p| {
            !(p.stream == stream && (consumer.is_none() || p.consumer.as_deref() == consumer))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_policies_and_resource_policies_live_and_die_together() {
        let mut a = AccessState::default();
        let put = |id: &str| AccessCommand::PutKey {
            key_id: id.into(),
            secret: Secret("s".into()),
            created_ms: 1,
        };
        assert_eq!(a.apply(&put("K1"), |_, _| true), MetaResponse::Ok);
        assert!(matches!(
            a.apply(&put("K1"), |_, _| true),
            MetaResponse::ResourceInUse(_)
        ));
        let policy = Policy::parse(
            r#"{"statements":[{"effect":"allow","actions":["read"],"streams":["*"]}]}"#,
        )
        .unwrap();
        let put_policy = |id: &str| AccessCommand::PutPolicy {
            key_id: id.into(),
            policy: policy.clone(),
        };
        assert!(matches!(
            a.apply(&put_policy("NOPE"), |_, _| true),
            MetaResponse::ResourceNotFound(_)
        ));
        assert_eq!(a.apply(&put_policy("K1"), |_, _| true), MetaResponse::Ok);
        assert_eq!(
            a.apply(
                &AccessCommand::DeleteKey {
                    key_id: "K1".into()
                },
                |_, _| true
            ),
            MetaResponse::Ok
        );
        assert!(a.policies.is_empty(), "a key's policy goes with it");

        let doc = r#"{"Statement":[{"Effect":"Deny","Principal":"*","Action":"kinesis:*","Resource":"*"}]}"#;
        let rp = |consumer: Option<&str>| AccessCommand::PutResourcePolicy {
            arn: format!("arn/{consumer:?}"),
            policy: StoredResourcePolicy::new("s".into(), consumer.map(Into::into), doc.into()),
        };
        assert!(matches!(
            a.apply(&rp(None), |_, _| false),
            MetaResponse::ResourceNotFound(_)
        ));
        assert_eq!(a.apply(&rp(None), |_, _| true), MetaResponse::Ok);
        assert_eq!(a.apply(&rp(Some("c")), |_, _| true), MetaResponse::Ok);
        a.forget_resource("s", Some("c"));
        assert_eq!(a.resource_policies.len(), 1);
        a.forget_resource("s", None);
        assert!(a.resource_policies.is_empty());

        // The document survives a round trip through the snapshot format, parsed again.
        let stored = StoredResourcePolicy::new("s".into(), None, doc.into());
        let json = serde_json::to_string(&stored).unwrap();
        assert!(!json.contains("Secret"));
        let back: StoredResourcePolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stored);
        assert!(back.parsed().is_some());
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "<secret>");
    }
}
