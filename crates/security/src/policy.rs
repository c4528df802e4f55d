//! Permissions (issue 15, point 4): what an access key may do, and on which streams.
//!
//! A [`Policy`] is a list of statements, each allowing or denying some [`Permission`]s on the
//! streams whose names match its patterns (`*` matches any run of characters). A request is
//! allowed when some statement allows it and none denies it: an explicit deny always wins, and
//! what no statement mentions is denied. The document, as `millrace policy put` takes it:
//!
//! ```json
//! {"statements": [
//!   {"effect": "allow", "actions": ["read", "write"], "streams": ["orders-*"]},
//!   {"effect": "deny",  "actions": ["write"],         "streams": ["orders-audit"]}
//! ]}
//! ```
//!
//! Kinesis resource policies, evaluated beside these, are in [`crate::resource_policy`].

use serde::{Deserialize, Serialize};

/// What a request does, in the four classes a policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// GetRecords, iterators, SubscribeToShard, describe and list calls, consumer groups.
    Read,
    /// PutRecord(s).
    Write,
    /// Create, delete, reshard, retention, tags, consumers, stream settings, resource policies.
    Admin,
    /// Decommission, replica moves, cluster status, access keys and policies.
    Cluster,
}

impl Permission {
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Write,
        Permission::Admin,
        Permission::Cluster,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
            Permission::Cluster => "cluster",
        }
    }

    fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// One statement: `actions` are permission names (or `*` for all four); `streams` are name
/// patterns. Cluster actions concern no stream, so `streams` may be empty when `actions` is
/// `["cluster"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub effect: Effect,
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<String>,
}

/// A principal's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

/// Largest policy document, in bytes.
pub const POLICY_BYTES_MAX: usize = 16 * 1024;
/// Most statements in one policy.
pub const POLICY_STATEMENTS_MAX: usize = 100;
/// Longest stream-name pattern (a stream name is at most 128 characters).
pub const STREAM_PATTERN_CHARS_MAX: usize = 128;

/// What one policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// No statement matches: denied unless another policy allows it.
    NotMentioned,
}

impl Decision {
    /// Two policies' decisions together: an explicit deny wins, then an allow.
    pub fn and(self, other: Decision) -> Decision {
        match (self, other) {
            (Decision::Deny, _) | (_, Decision::Deny) => Decision::Deny,
            (Decision::Allow, _) | (_, Decision::Allow) => Decision::Allow,
            _ => Decision::NotMentioned,
        }
    }
}

impl Policy {
    /// Parses and checks a policy document; the error names the statement and field at fault.
    pub fn parse(text: &str) -> Result<Policy, String> {
        if text.len() > POLICY_BYTES_MAX {
            return Err(format!(
                "the policy is {} bytes, more than the limit of {POLICY_BYTES_MAX}",
                text.len()
            ));
        }
        let policy: Policy =
            serde_json::from_str(text).map_err(|e| format!("the policy is not valid: {e}"))?;
        policy.validate()?;
        Ok(policy)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.statements.is_empty() || self.statements.len() > POLICY_STATEMENTS_MAX {
            return Err(format!(
                "a policy has 1-{POLICY_STATEMENTS_MAX} statements, not {}",
                self.statements.len()
            ));
        }
        for (i, s) in self.statements.iter().enumerate() {
            if s.actions.is_empty() {
                return Err(format!("statements[{i}].actions is empty"));
            }
            for a in &s.actions {
                if a != "*" && Permission::parse(a).is_none() {
                    return Err(format!(
                        "statements[{i}].actions names {a:?}; the actions are read, write, admin, cluster and *"
                    ));
                }
            }
            let only_cluster = s.actions.iter().all(|a| a == "cluster");
            if s.streams.is_empty() && !only_cluster {
                return Err(format!(
                    "statements[{i}].streams is empty; name the streams (\"*\" for all)"
                ));
            }
            for p in &s.streams {
                let ok = !p.is_empty()
                    && p.len() <= STREAM_PATTERN_CHARS_MAX
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-*".contains(&b));
                if !ok {
                    return Err(format!(
                        "statements[{i}].streams has {p:?}; a pattern is 1-{STREAM_PATTERN_CHARS_MAX} characters of [a-zA-Z0-9_.-*]"
                    ));
                }
            }
        }
        Ok(())
    }

    /// What this policy says about `permission` on `stream` (`None` for cluster actions, which
    /// concern no stream). A statement covers cluster actions when it names `cluster`, or
    /// `*` on every stream (no streams, or a `*` pattern): `*` on `team-a-*` is about those
    /// streams, and grants (or denies) nothing on the cluster.
    pub fn decide(&self, permission: Permission, stream: Option<&str>) -> Decision {
        let mut decision = Decision::NotMentioned;
        for s in &self.statements {
            let named = s.actions.iter().any(|a| a == permission.name());
            let star = s.actions.iter().any(|a| a == "*");
            let every_stream = s.streams.is_empty() || s.streams.iter().any(|p| p == "*");
            let (action, resource) = match stream {
                None => (named || (star && every_stream), true),
                Some(name) => (named || star, s.streams.iter().any(|p| glob_match(p, name))),
            };
            if action && resource {
                decision = decision.and(match s.effect {
                    Effect::Allow => Decision::Allow,
                    Effect::Deny => Decision::Deny,
                });
            }
        }
        decision
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob_match_with(pattern.as_bytes(), text.as_bytes(), |a, b| a == b)
}

/// [`glob_match`] with `?` matching one character, ASCII case-insensitively when asked (IAM
/// action names are case-insensitive; resources are not).
pub fn iam_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    glob_match_with(pattern.as_bytes(), text.as_bytes(), |p, t| {
        p == b'?' || p == t || (ignore_case && p.eq_ignore_ascii_case(&t))
    })
}

fn glob_match_with(p: &[u8], t: &[u8], eq: impl Fn(u8, u8) -> bool) -> bool {
    // Greedy with backtracking to the last star: linear in practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && eq(p[pi], t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "orders"));
        assert!(glob_match("orders-*", "orders-eu"));
        assert!(glob_match("orders-*", "orders-"));
        assert!(!glob_match("orders-*", "orders"));
        assert!(glob_match("*-audit", "orders-audit"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("orders", "orders"));
        assert!(!glob_match("orders", "orders2"));
        assert!(iam_match("kinesis:Put*", "kinesis:PutRecords", false));
        assert!(iam_match("KINESIS:put*", "kinesis:PutRecords", true));
        assert!(!iam_match("KINESIS:put*", "kinesis:PutRecords", false));
        assert!(iam_match("kinesis:Get?ecords", "kinesis:GetRecords", false));
    }

    #[test]
    fn deny_wins_and_silence_denies() {
        let p = Policy::parse(
            r#"{"statements":[
                {"effect":"allow","actions":["read","write"],"streams":["orders-*"]},
                {"effect":"deny","actions":["write"],"streams":["orders-audit"]},
                {"effect":"allow","actions":["read"],"streams":["metrics"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            p.decide(Permission::Write, Some("orders-eu")),
            Decision::Allow
        );
        assert_eq!(
            p.decide(Permission::Write, Some("orders-audit")),
            Decision::Deny
        );
        assert_eq!(
            p.decide(Permission::Read, Some("orders-audit")),
            Decision::Allow
        );
        assert_eq!(
            p.decide(Permission::Write, Some("metrics")),
            Decision::NotMentioned
        );
        assert_eq!(p.decide(Permission::Cluster, None), Decision::NotMentioned);
        assert_eq!(Decision::Allow.and(Decision::Deny), Decision::Deny);
        assert_eq!(Decision::NotMentioned.and(Decision::Allow), Decision::Allow);
    }

    #[test]
    fn bad_documents_name_the_field() {
        let err = |t: &str| Policy::parse(t).unwrap_err();
        assert!(err("{}").contains("statements"));
        assert!(err(r#"{"statements":[]}"#).contains("1-100"));
        assert!(
            err(r#"{"statements":[{"effect":"allow","actions":["fly"],"streams":["*"]}]}"#)
                .contains("statements[0].actions")
        );
        assert!(
            err(r#"{"statements":[{"effect":"allow","actions":["read"]}]}"#)
                .contains("statements[0].streams")
        );
        assert!(
            err(r#"{"statements":[{"effect":"allow","actions":["read"],"streams":["a b"]}]}"#)
                .contains("[a-zA-Z0-9_.-*]")
        );
        assert!(
            err(r#"{"statements":[{"effect":"maybe","actions":["read"],"streams":["*"]}]}"#)
                .contains("not valid")
        );
        assert!(err(&" ".repeat(POLICY_BYTES_MAX + 1)).contains("limit"));
        // `*` on some streams says nothing about the cluster; `*` on every stream does.
        let scoped = Policy::parse(
            r#"{"statements":[{"effect":"allow","actions":["*"],"streams":["team-a-*"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            scoped.decide(Permission::Cluster, None),
            Decision::NotMentioned
        );
        assert_eq!(
            scoped.decide(Permission::Admin, Some("team-a-1")),
            Decision::Allow
        );
        let all =
            Policy::parse(r#"{"statements":[{"effect":"deny","actions":["*"],"streams":["*"]}]}"#)
                .unwrap();
        assert_eq!(all.decide(Permission::Cluster, None), Decision::Deny);
        // A cluster-only statement needs no streams.
        let p =
            Policy::parse(r#"{"statements":[{"effect":"allow","actions":["cluster"]}]}"#).unwrap();
        assert_eq!(p.decide(Permission::Cluster, None), Decision::Allow);
    }
}
