//! Kinesis resource policies (`PutResourcePolicy` on a stream or consumer ARN): IAM policy
//! documents, evaluated with the rules IAM applies to them.
//!
//! A statement applies to a request when its `Principal`, `Action` and `Resource` all match:
//! - `Principal`: `"*"`, `{"AWS": "*"}`, the account (`arn:aws:iam::ACCOUNT:root` or the bare
//!   account id: every key of the cluster), or one access key (its id, or
//!   `arn:aws:iam::ACCOUNT:user/KEY_ID`);
//! - `Action`: `kinesis:NAME` patterns (`*` and `?`; names are case-insensitive);
//! - `Resource`: ARN patterns (`*` and `?`).
//!
//! An explicit `Deny` wins over every `Allow`. `Condition`, `NotAction`, `NotResource` and
//! `NotPrincipal` are refused when the policy is put: evaluating a policy while ignoring part
//! of it could allow what its author meant to deny.

use serde_json::Value;

use crate::policy::{iam_match, Decision, Effect};

/// Largest resource policy, in characters (the Kinesis limit).
pub const RESOURCE_POLICY_CHARS_MAX: usize = 20_480;

/// A parsed resource policy. The document as put is kept beside it (GetResourcePolicy answers
/// it verbatim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePolicy {
    statements: Vec<IamStatement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IamStatement {
    effect: Effect,
    /// `None`: any principal.
    principals: Option<Vec<String>>,
    actions: Vec<String>,
    resources: Vec<String>,
}

/// Who is asking, as a resource policy's `Principal` can name them.
pub struct Caller<'a> {
    pub key_id: &'a str,
    pub account_id: &'a str,
}

impl ResourcePolicy {
    /// Parses and checks a policy; the error says what is wrong, in the words Kinesis uses
    /// for an invalid policy where it can.
    pub fn parse(text: &str) -> Result<ResourcePolicy, String> {
        let chars = text.chars().count();
        if chars == 0 || chars > RESOURCE_POLICY_CHARS_MAX {
            return Err(format!(
                "Policy must be 1-{RESOURCE_POLICY_CHARS_MAX} characters, not {chars}"
            ));
        }
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("Policy is not valid JSON: {e}"))?;
        let doc = doc.as_object().ok_or("Policy must be a JSON object")?;
        for key in doc.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(format!("Policy has an unknown element {key:?}"));
            }
        }
        match doc.get("Version").map(|v| v.as_str()) {
            None | Some(Some("2012-10-17")) | Some(Some("2008-10-17")) => {}
            _ => return Err("Policy Version must be \"2012-10-17\" or \"2008-10-17\"".into()),
        }
        let statements = match doc.get("Statement") {
            Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
            Some(one @ Value::Object(_)) => vec![one],
            _ => return Err("Policy has no Statement".into()),
        };
        if statements.is_empty() {
            return Err("Policy has no Statement".into());
        }
        let statements = statements
            .into_iter()
            .enumerate()
            .map(|(i, s)| statement(i, s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ResourcePolicy { statements })
    }

    /// What this policy says about `action` (`kinesis:PutRecord`) by `caller` on `resource`.
    pub fn decide(&self, caller: &Caller<'_>, action: &str, resource: &str) -> Decision {
        let mut decision = Decision::NotMentioned;
        for s in &self.statements {
            let principal = match &s.principals {
                None => true,
                Some(list) => list.iter().any(|p| names(p, caller)),
            };
            let applies = principal
                && s.actions.iter().any(|a| iam_match(a, action, true))
                && s.resources.iter().any(|r| iam_match(r, resource, false));
            if applies {
                decision = decision.and(match s.effect {
                    Effect::Allow => Decision::Allow,
                    Effect::Deny => Decision::Deny,
                });
            }
        }
        decision
    }
}

/// Whether a `Principal` entry names the caller.
fn names(entry: &str, caller: &Caller<'_>) -> bool {
    let account_root = format!("arn:aws:iam::{}:root", caller.account_id);
    let user = format!("arn:aws:iam::{}:user/{}", caller.account_id, caller.key_id);
    entry == "*"
        || entry == caller.account_id
        || entry == account_root
        || entry == caller.key_id
        || entry == user
}

fn statement(i: usize, s: &Value) -> Result<IamStatement, String> {
    let s = s
        .as_object()
        .ok_or_else(|| format!("Statement[{i}] must be an object"))?;
    for key in s.keys() {
        match key.as_str() {
            "Sid" | "Effect" | "Principal" | "Action" | "Resource" => {}
            "Condition" | "NotAction" | "NotResource" | "NotPrincipal" => {
                return Err(format!(
                    "Statement[{i}] uses {key}, which Millrace does not evaluate; the policy is refused rather than half applied"
                ))
            }
            other => return Err(format!("Statement[{i}] has an unknown element {other:?}")),
        }
    }
    let effect = match s.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        _ => {
            return Err(format!(
                "Statement[{i}].Effect must be \"Allow\" or \"Deny\""
            ))
        }
    };
    let principals = match s.get("Principal") {
        Some(Value::String(star)) if star == "*" => None,
        Some(Value::Object(map)) => {
            let mut list = Vec::new();
            for (kind, v) in map {
                if kind != "AWS" {
                    return Err(format!(
                        "Statement[{i}].Principal names {kind:?}; only \"AWS\" principals can call Kinesis"
                    ));
                }
                list.extend(strings(v, &format!("Statement[{i}].Principal.AWS"))?);
            }
            if list.iter().any(|p| p == "*") {
                None
            } else {
                Some(list)
            }
        }
        _ => {
            return Err(format!(
                "Statement[{i}].Principal is required: \"*\" or {{\"AWS\": ...}}"
            ))
        }
    };
    let actions = strings(
        s.get("Action")
            .ok_or_else(|| format!("Statement[{i}].Action is required"))?,
        &format!("Statement[{i}].Action"),
    )?;
    if let Some(bad) = actions
        .iter()
        .find(|a| !(*a == "*" || a.to_ascii_lowercase().starts_with("kinesis:")))
    {
        return Err(format!(
            "Statement[{i}].Action has {bad:?}; a Kinesis resource policy names kinesis: actions"
        ));
    }
    let resources = strings(
        s.get("Resource")
            .ok_or_else(|| format!("Statement[{i}].Resource is required"))?,
        &format!("Statement[{i}].Resource"),
    )?;
    if let Some(bad) = resources
        .iter()
        .find(|r| !(*r == "*" || r.starts_with("arn:aws:kinesis:")))
    {
        return Err(format!(
            "Statement[{i}].Resource has {bad:?}; it must be a Kinesis ARN (arn:aws:kinesis:...)"
        ));
    }
    Ok(IamStatement {
        effect,
        principals,
        actions,
        resources,
    })
}

/// A string or a non-empty array of strings.
fn strings(v: &Value, field: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{field} must hold strings"))?,
        _ => return Err(format!("{field} must be a string or a list of strings")),
    };
    if list.is_empty() {
        return Err(format!("{field} is empty"));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";

    fn caller(key: &str) -> Caller<'_> {
        Caller {
            key_id: key,
            account_id: "123456789012",
        }
    }

    #[test]
    fn deny_for_one_key_wins_over_allow_for_the_account() {
        let p = ResourcePolicy::parse(&format!(
            r#"{{"Version":"2012-10-17","Statement":[
                {{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::123456789012:root"}},
                  "Action":"kinesis:*","Resource":"{STREAM}"}},
                {{"Sid":"noWrites","Effect":"Deny","Principal":{{"AWS":["arn:aws:iam::123456789012:user/BAD"]}},
                  "Action":["kinesis:PutRecord","kinesis:PutRecords"],"Resource":"{STREAM}"}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            p.decide(&caller("GOOD"), "kinesis:PutRecords", STREAM),
            Decision::Allow
        );
        assert_eq!(
            p.decide(&caller("BAD"), "kinesis:PutRecords", STREAM),
            Decision::Deny
        );
        assert_eq!(
            p.decide(&caller("BAD"), "kinesis:GetRecords", STREAM),
            Decision::Allow
        );
        assert_eq!(
            p.decide(&caller("BAD"), "kinesis:GetRecords", &format!("{STREAM}2")),
            Decision::NotMentioned
        );
        // Action names are case-insensitive.
        assert_eq!(
            p.decide(&caller("BAD"), "kinesis:putrecord", STREAM),
            Decision::Deny
        );
    }

    #[test]
    fn star_principals_and_a_single_statement_object() {
        let p = ResourcePolicy::parse(
            r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"kinesis:Get*","Resource":"arn:aws:kinesis:*"}}"#,
        )
        .unwrap();
        assert_eq!(
            p.decide(&caller("ANY"), "kinesis:GetRecords", STREAM),
            Decision::Deny
        );
        assert_eq!(
            p.decide(&caller("ANY"), "kinesis:PutRecords", STREAM),
            Decision::NotMentioned
        );
    }

    #[test]
    fn what_cannot_be_evaluated_is_refused() {
        let err = |t: &str| ResourcePolicy::parse(t).unwrap_err();
        let stmt = |extra: &str| {
            format!(
                r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"kinesis:*","Resource":"{STREAM}"{extra}}}]}}"#
            )
        };
        assert!(err(&stmt(
            r#","Condition":{"Bool":{"aws:SecureTransport":"true"}}"#
        ))
        .contains("Condition"));
        assert!(err(&stmt(r#","NotAction":"kinesis:Get*""#)).contains("NotAction"));
        assert!(err("").contains("1-20480"));
        assert!(err("[]").contains("object"));
        assert!(err(r#"{"Statement":[]}"#).contains("no Statement"));
        assert!(err(r#"{"Version":"2020-01-01","Statement":[]}"#).contains("Version"));
        assert!(err(&format!(
            r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"{STREAM}"}}]}}"#
        ))
        .contains("kinesis: actions"));
        assert!(err(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kinesis:*","Resource":"arn:aws:s3:::b"}]}"#
        )
        .contains("Kinesis ARN"));
        assert!(err(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"x"},"Action":"kinesis:*","Resource":"*"}]}"#
        )
        .contains("AWS"));
        assert!(ResourcePolicy::parse(&stmt("")).is_ok());
    }
}
