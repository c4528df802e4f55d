//! Who may do what (issue 15, point 4), for both APIs.
//!
//! Principals are access keys. The bootstrap keys of `--access-keys` are cluster admins; keys
//! created with `CreateAccessKey` may do what their [`Policy`] allows. Kinesis resource
//! policies on a stream or consumer ARN are evaluated beside it: a request is allowed when the
//! key's policy or a resource policy allows it and neither denies it (an explicit deny wins,
//! even over an admin, except that admins can always manage resource policies: nobody is
//! locked out of a stream for good). Authentication is on when the node has bootstrap keys;
//! without them every request is allowed, as before.

use millrace_proto::v1 as pb;
use millrace_security::access_sig::{KeyStore, Principal};
use millrace_security::policy::{Decision, Permission, Policy};
use millrace_security::resource_policy::Caller;
use rand::distr::{Alphanumeric, SampleString};
use tonic::Request;

use super::error::ApiError;
use super::grpc::{meta_result, MillraceService};
use crate::metadata::access::{AccessCommand, Secret, StoredResourcePolicy};
use crate::metadata::state::MetaCommand;
use crate::server::node::Node;
use crate::server::now_ms;

/// The permission an action needs, by its Kinesis (or Millrace gRPC) name. `None`: any
/// authenticated caller may call it (cluster discovery, limits, ListStreams, which shows only
/// the streams the caller may read).
pub fn permission_of(action: &str) -> Option<Permission> {
    use Permission::*;
    Some(match action {
        "DescribeStream"
        | "DescribeStreamSummary"
        | "ListShards"
        | "GetShardIterator"
        | "GetRecords"
        | "SubscribeToShard"
        | "ListTagsForStream"
        | "ListTagsForResource"
        | "ListStreamConsumers"
        | "DescribeStreamConsumer"
        | "ConsumerGroupHeartbeat"
        | "CheckpointLease"
        | "ReleaseLeases"
        | "DescribeConsumerGroup" => Read,
        "PutRecord" | "PutRecords" => Write,
        "CreateStream"
        | "DeleteStream"
        | "SplitShard"
        | "MergeShards"
        | "UpdateShardCount"
        | "IncreaseStreamRetentionPeriod"
        | "DecreaseStreamRetentionPeriod"
        | "AddTagsToStream"
        | "RemoveTagsFromStream"
        | "TagResource"
        | "UntagResource"
        | "RegisterStreamConsumer"
        | "DeregisterStreamConsumer"
        | "UpdateStreamMode"
        | "UpdateMaxRecordSize"
        | "UpdateStreamWarmThroughput"
        | "UpdateStreamRecordDistributionStrategy"
        | "UpdateAccountSettings"
        | "EnableEnhancedMonitoring"
        | "DisableEnhancedMonitoring"
        | "StartStreamEncryption"
        | "StopStreamEncryption"
        | "PutResourcePolicy"
        | "GetResourcePolicy"
        | "DeleteResourcePolicy" => Admin,
        "MoveShardReplica" | "GetClusterStatus" | "DecommissionNode" | "GetNodeStats"
        | "CreateAccessKey" | "ListAccessKeys" | "DeleteAccessKey" | "PutPolicy" | "GetPolicy"
        | "DeletePolicy" => Cluster,
        _ => return None,
    })
}

/// What a request touches: the stream (for stream actions) and the consumer's name (for
/// actions on a registered consumer; its resource policy is found by the consumer's own ARN,
/// whatever spelling of it the request used).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub stream: Option<&'a str>,
    pub consumer: Option<&'a str>,
}

impl<'a> Target<'a> {
    pub fn stream(name: &'a str) -> Target<'a> {
        Target {
            stream: Some(name),
            consumer: None,
        }
    }
}

impl KeyStore for Node {
    fn enforced(&self) -> bool {
        !self.config.kinesis.access_keys.is_empty()
    }

    fn secret(&self, key_id: &str) -> Option<String> {
        if let Some(s) = self.config.kinesis.access_keys.secret(key_id) {
            return Some(s.to_string());
        }
        self.meta
            .read(|s| s.access.keys.get(key_id).map(|k| k.secret.0.clone()))
    }
}

/// The verified access key of a gRPC call (none when authentication is off).
pub fn principal_of<T>(req: &Request<T>) -> Option<String> {
    req.extensions().get::<Principal>().map(|p| p.0.clone())
}

impl Node {
    /// Whether the bootstrap keys include `key_id` (a cluster admin).
    fn is_admin(&self, key_id: &str) -> bool {
        self.config.kinesis.access_keys.secret(key_id).is_some()
    }

    /// Allows `action` on `target` for `principal`, or says why not in Kinesis's words.
    pub fn authorize(
        &self,
        principal: Option<&str>,
        action: &str,
        target: Target<'_>,
    ) -> Result<(), ApiError> {
        if !self.enforced() {
            return Ok(());
        }
        let Some(key) = principal else {
            return Err(ApiError::Unauthenticated(
                "the request is not signed with an access key".into(),
            ));
        };
        self.admission.spend(key)?;
        self.decide(key, action, target)
    }

    /// [`Node::authorize`] for an authenticated key, spending none of its rate.
    fn decide(&self, key: &str, action: &str, target: Target<'_>) -> Result<(), ApiError> {
        let Some(permission) = permission_of(action) else {
            return Ok(());
        };
        let kinesis = &self.config.kinesis;
        // A stream action whose stream could not be read from the request is judged against
        // the empty name: only a `*` pattern matches it (the action then refuses the input).
        let stream = match permission {
            Permission::Cluster => None,
            _ => Some(target.stream.unwrap_or("")),
        };
        let admin = self.is_admin(key);
        let (identity, resource, consumer_arn) = self.meta.read(|s| {
            // The registered consumer's canonical ARN (its resource policy's key).
            let consumer_arn = stream.zip(target.consumer).and_then(|(name, c)| {
                let sm = s.streams.get(name)?;
                let cm = sm.consumers.get(c)?;
                Some(super::consumers::consumer_arn(kinesis, sm, cm))
            });
            let identity = if admin {
                Decision::Allow
            } else {
                s.access
                    .policies
                    .get(key)
                    .map_or(Decision::NotMentioned, |p| p.decide(permission, stream))
            };
            let manages_policies = action.ends_with("ResourcePolicy");
            let mut resource = Decision::NotMentioned;
            if let (Some(name), false) = (stream, admin && manages_policies) {
                let caller = Caller {
                    key_id: key,
                    account_id: &kinesis.account_id,
                };
                let kinesis_action = format!("kinesis:{action}");
                let stream_arn = kinesis.stream_arn(name);
                for arn in [Some(stream_arn.as_str()), consumer_arn.as_deref()]
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = s.access.resource_policies.get(arn) {
                        resource = resource.and(match p.parsed() {
                            Some(p) => p.decide(&caller, &kinesis_action, arn),
                            None => Decision::Deny,
                        });
                    }
                }
            }
            (identity, resource, consumer_arn)
        });
        let resource_arn = match (consumer_arn, stream) {
            (Some(arn), _) => arn,
            (None, Some(name)) => kinesis.stream_arn(name),
            (None, None) => format!(
                "arn:aws:kinesis:{}:{}:*",
                kinesis.region, kinesis.account_id
            ),
        };
        let why = match (identity, resource) {
            (Decision::Deny, _) => "with an explicit deny in an identity-based policy".to_string(),
            (_, Decision::Deny) => "with an explicit deny in a resource-based policy".to_string(),
            (Decision::Allow, _) | (_, Decision::Allow) => return Ok(()),
            _ => format!("because no identity-based policy allows the kinesis:{action} action"),
        };
        tracing::debug!(key, action, resource = %resource_arn, "request denied");
        Err(ApiError::AccessDenied(format!(
            "User: arn:aws:iam::{}:user/{key} is not authorized to perform: kinesis:{action} on resource: {resource_arn} {why}",
            kinesis.account_id
        )))
    }

    /// Whether `principal` may read `stream` (ListStreams shows only those).
    pub fn may_read(&self, principal: Option<&str>, stream: &str) -> bool {
        match principal {
            _ if !self.enforced() => true,
            Some(key) => self
                .decide(key, "DescribeStream", Target::stream(stream))
                .is_ok(),
            None => false,
        }
    }
}

/// A [`Target`], owned.
#[derive(Debug, Default)]
pub struct ResourceTarget {
    pub stream: Option<String>,
    pub consumer: Option<String>,
}

impl ResourceTarget {
    pub fn stream(stream: Option<String>) -> ResourceTarget {
        ResourceTarget {
            stream,
            consumer: None,
        }
    }

    pub fn as_target(&self) -> Target<'_> {
        Target {
            stream: self.stream.as_deref(),
            consumer: self.consumer.as_deref(),
        }
    }
}

/// The stream (and consumer) a `ResourceARN` names; nothing when it names neither (the action
/// then refuses it).
pub fn resource_target(arn: &str) -> ResourceTarget {
    if arn.contains("/consumer/") {
        match super::consumers::parse_consumer_arn(arn) {
            Ok((stream, consumer)) => ResourceTarget {
                stream: Some(stream),
                consumer: Some(consumer),
            },
            Err(_) => ResourceTarget::default(),
        }
    } else {
        ResourceTarget::stream(super::grpc::stream_name_from(arn).ok())
    }
}

/// The consumer a call names, as the consumer calls read it: by its ARN when given, else by
/// stream ARN and consumer name.
pub fn consumer_target(stream_arn: &str, name: &str, consumer_arn: &str) -> ResourceTarget {
    if !consumer_arn.is_empty() {
        return resource_target(consumer_arn);
    }
    ResourceTarget {
        stream: super::grpc::stream_name_from(stream_arn).ok(),
        consumer: Some(name.to_string()).filter(|n| !n.is_empty()),
    }
}

/// Length of generated access key ids (after the `MRK` prefix) and secrets.
const KEY_ID_RANDOM_CHARS: usize = 17;
const SECRET_CHARS: usize = 40;

impl MillraceService {
    /// Refuses the call unless its caller may do `action` on `target` (streams may be given
    /// as names or ARNs).
    pub(super) fn allow<T>(
        &self,
        req: &Request<T>,
        action: &str,
        target: Target<'_>,
    ) -> Result<(), ApiError> {
        if !self.node.enforced() {
            return Ok(());
        }
        self.allow_key(principal_of(req).as_deref(), action, target)
    }

    /// [`MillraceService::allow`] for a known principal.
    pub(super) fn allow_key(
        &self,
        principal: Option<&str>,
        action: &str,
        target: Target<'_>,
    ) -> Result<(), ApiError> {
        if !self.node.enforced() {
            return Ok(());
        }
        let stream = target
            .stream
            .filter(|s| !s.is_empty())
            .map(super::grpc::stream_name_from)
            .transpose()?;
        self.node.authorize(
            principal,
            action,
            Target {
                stream: stream.as_deref(),
                consumer: target.consumer.filter(|c| !c.is_empty()),
            },
        )
    }

    /// [`MillraceService::allow`] for an action on a stream or consumer ARN (tags and
    /// resource policies).
    pub(super) fn allow_resource<T>(
        &self,
        req: &Request<T>,
        action: &str,
        arn: &str,
    ) -> Result<(), ApiError> {
        self.allow(req, action, resource_target(arn).as_target())
    }

    /// The stream a shard iterator was issued for (authorising GetRecords before reading).
    pub(crate) async fn iterator_stream(&self, iterator: &str) -> Result<String, ApiError> {
        Ok(self.decode_iterator(iterator).await?.stream)
    }

    pub(super) async fn create_access_key_impl(
        &self,
    ) -> Result<pb::CreateAccessKeyResponse, ApiError> {
        // ThreadRng: a CSPRNG (ChaCha12) seeded from the OS.
        let (key_id, secret) = {
            let mut rng = rand::rng();
            let id = Alphanumeric
                .sample_string(&mut rng, KEY_ID_RANDOM_CHARS)
                .to_ascii_uppercase();
            (
                format!("MRK{id}"),
                Alphanumeric.sample_string(&mut rng, SECRET_CHARS),
            )
        };
        if self.node.is_admin(&key_id) {
            return Err(ApiError::ResourceInUse(format!(
                "Access key {key_id} already exists"
            )));
        }
        let created_ms = now_ms();
        let cmd = MetaCommand::Access(AccessCommand::PutKey {
            key_id: key_id.clone(),
            secret: Secret(secret.clone()),
            created_ms,
        });
        meta_result(self.node.propose_meta(&cmd).await?)?;
        tracing::info!(key_id = %key_id, "access key created");
        Ok(pb::CreateAccessKeyResponse {
            access_key_id: key_id,
            secret_access_key: secret,
            created_ms,
        })
    }

    pub(super) async fn list_access_keys_impl(
        &self,
    ) -> Result<pb::ListAccessKeysResponse, ApiError> {
        self.node.sync_meta().await?;
        let mut keys: Vec<pb::AccessKeyInfo> = self
            .node
            .config
            .kinesis
            .access_keys
            .key_ids()
            .map(|id| pb::AccessKeyInfo {
                access_key_id: id.to_string(),
                created_ms: 0,
                bootstrap: true,
                has_policy: false,
            })
            .collect();
        self.node.meta.read(|s| {
            keys.extend(s.access.keys.iter().map(|(id, k)| pb::AccessKeyInfo {
                access_key_id: id.clone(),
                created_ms: k.created_ms,
                bootstrap: false,
                has_policy: s.access.policies.contains_key(id),
            }))
        });
        Ok(pb::ListAccessKeysResponse { keys })
    }

    pub(super) async fn access_command(&self, cmd: AccessCommand) -> Result<(), ApiError> {
        meta_result(self.node.propose_meta(&MetaCommand::Access(cmd)).await?)
    }

    pub(super) async fn put_policy_impl(&self, req: pb::PutPolicyRequest) -> Result<(), ApiError> {
        if self.node.is_admin(&req.access_key_id) {
            return Err(ApiError::InvalidArgument(format!(
                "{} is a bootstrap key (--access-keys): it is a cluster admin and takes no policy",
                req.access_key_id
            )));
        }
        let policy = Policy::parse(&req.policy_json).map_err(ApiError::InvalidArgument)?;
        self.access_command(AccessCommand::PutPolicy {
            key_id: req.access_key_id,
            policy,
        })
        .await
    }

    pub(super) async fn get_policy_impl(&self, key_id: &str) -> Result<String, ApiError> {
        self.node.sync_meta().await?;
        let policy = self
            .node
            .meta
            .read(|s| s.access.policies.get(key_id).cloned())
            .ok_or_else(|| {
                ApiError::ResourceNotFound(format!("Access key {key_id} has no policy"))
            })?;
        serde_json::to_string_pretty(&policy).map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// The stream (and consumer) a stream or consumer ARN names, checked to exist.
    async fn policy_resource(&self, arn: &str) -> Result<(String, Option<String>), ApiError> {
        let invalid = || {
            ApiError::InvalidArgument(format!(
                "ResourceARN {arn:?} is not a stream or consumer ARN of this cluster"
            ))
        };
        let prefix = format!(
            "arn:aws:kinesis:{}:{}:stream/",
            self.node.config.kinesis.region, self.node.config.kinesis.account_id
        );
        if !arn.starts_with(&prefix) {
            return Err(invalid());
        }
        if arn.contains("/consumer/") {
            let (stream, consumer) = super::consumers::parse_consumer_arn(arn)?;
            let s = self.stream_fresh(&stream).await?;
            let c = s
                .consumers
                .get(&consumer)
                .ok_or_else(|| ApiError::ResourceNotFound(format!("Resource {arn} not found")))?;
            if super::consumers::consumer_arn(&self.node.config.kinesis, &s, c) != arn {
                return Err(ApiError::ResourceNotFound(format!(
                    "Resource {arn} not found"
                )));
            }
            Ok((stream, Some(consumer)))
        } else {
            let s = self.stream_fresh(&arn[prefix.len()..]).await?;
            Ok((s.name, None))
        }
    }

    pub(super) async fn put_resource_policy_impl(
        &self,
        arn: String,
        text: String,
    ) -> Result<(), ApiError> {
        let (stream, consumer) = self.policy_resource(&arn).await?;
        millrace_security::resource_policy::ResourcePolicy::parse(&text)
            .map_err(ApiError::InvalidArgument)?;
        self.access_command(AccessCommand::PutResourcePolicy {
            arn,
            policy: StoredResourcePolicy::new(stream, consumer, text),
        })
        .await
    }

    /// The policy on `arn`, `{}` when it has none (as Kinesis answers).
    pub(super) async fn get_resource_policy_impl(&self, arn: &str) -> Result<String, ApiError> {
        self.policy_resource(arn).await?;
        Ok(self.node.meta.read(|s| {
            s.access
                .resource_policies
                .get(arn)
                .map_or_else(|| "{}".to_string(), |p| p.text().to_string())
        }))
    }

    pub(super) async fn delete_resource_policy_impl(&self, arn: String) -> Result<(), ApiError> {
        self.policy_resource(&arn).await?;
        self.access_command(AccessCommand::DeleteResourcePolicy { arn })
            .await
    }
}
