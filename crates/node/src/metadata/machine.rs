//! The metadata group's state machine: [`MetaState`] behind a lock, with a watch that fires
//! whenever it changes, so the node can reconcile its shard replicas.

use std::sync::{Arc, RwLock};

use millrace_raft::types::LogId;
use millrace_raft::GroupStateMachine;
use tokio::sync::watch;

use super::state::{MetaCommand, MetaResponse, MetaState};

/// The applied metadata state as this node knows it.
pub struct MetaShared {
    state: RwLock<MetaState>,
    /// Bumped on every applied change.
    version: watch::Sender<u64>,
    routes: super::write_routes::RouteCache,
}

impl MetaShared {
    pub fn new() -> Arc<MetaShared> {
        Arc::new(MetaShared {
            state: RwLock::new(MetaState::default()),
            version: watch::channel(0).0,
            routes: Default::default(),
        })
    }

    /// Bumped on every applied change.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    pub(super) fn route_cache(&self) -> &super::write_routes::RouteCache {
        &self.routes
    }

    /// Runs `f` on the current state.
    pub fn read<T>(&self, f: impl FnOnce(&MetaState) -> T) -> T {
        f(&self.state.read().expect("metadata lock"))
    }

    /// The iterator MAC key, once the cluster has one.
    pub fn cluster_secret(&self) -> Option<Vec<u8>> {
        self.read(|s| {
            s.cluster_secret
                .as_ref()
                .and_then(|h| hex::decode(&h.0).ok())
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

pub struct MetaMachine {
    shared: Arc<MetaShared>,
}

impl MetaMachine {
    pub fn new(shared: Arc<MetaShared>) -> MetaMachine {
        MetaMachine { shared }
    }
}

pub fn encode_command(cmd: &MetaCommand) -> Vec<u8> {
    serde_json::to_vec(cmd).expect("metadata commands serialise")
}

pub fn decode_response(bytes: &[u8]) -> Result<MetaResponse, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("bad metadata response: {e}"))
}

impl GroupStateMachine for MetaMachine {
    fn apply(&mut self, log_id: &LogId, data: &[u8]) -> Vec<u8> {
        let response = match serde_json::from_slice::<MetaCommand>(data) {
            Ok(cmd) => {
                let r = self
                    .shared
                    .state
                    .write()
                    .expect("metadata lock")
                    .apply(&cmd);
                self.shared.version.send_modify(|v| *v += 1);
                r
            }
            Err(e) => {
                // Only where and what kind: serde's message may quote a value, a secret's too.
                let e = serde_shape(&e);
                tracing::error!(index = log_id.index, error = %e, "undecodable metadata command skipped");
                MetaResponse::InvalidArgument(format!("undecodable metadata command: {e}"))
            }
        };
        serde_json::to_vec(&response).expect("metadata responses serialise")
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.shared.state.read().expect("metadata lock"))
            .expect("metadata state serialises")
    }

    fn restore(&mut self, _last: Option<&LogId>, data: &[u8]) -> Result<(), String> {
        let state: MetaState = if data.is_empty() {
            MetaState::default()
        } else {
            serde_json::from_slice(data)
                .map_err(|e| format!("bad metadata snapshot: {}", serde_shape(&e)))?
        };
        *self.shared.state.write().expect("metadata lock") = state;
        self.shared.version.send_modify(|v| *v += 1);
        Ok(())
    }
}

/// A JSON decoding error without its message (which may quote the value it could not take,
/// an access key's secret among them): its kind and position only.
fn serde_shape(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_entries_are_reported_without_their_values() {
        // A key's secret where a number belongs: serde's own message would quote it.
        let bad = r#"{"RemoveMember":{"node_id":"s3cr3t-value"}}"#;
        let e = serde_json::from_str::<MetaCommand>(bad).unwrap_err();
        assert!(
            e.to_string().contains("s3cr3t-value"),
            "serde quotes it: {e}"
        );
        let shown = serde_shape(&e);
        assert!(
            !shown.contains("s3cr3t-value") && shown.contains("line 1"),
            "{shown}"
        );
        // The iterator MAC key prints redacted, in the command and in the state.
        let text = r#"{"InitClusterSecret":{"secret_hex":"s3cr3t-value"}}"#;
        let cmd: MetaCommand = serde_json::from_str(text).unwrap();
        assert!(!format!("{cmd:?}").contains("s3cr3t-value"), "{cmd:?}");
        let mut state = MetaState::default();
        state.apply(&cmd);
        assert!(!format!("{state:?}").contains("s3cr3t-value"));
        assert_eq!(
            state.cluster_secret.map(|s| s.0).as_deref(),
            Some("s3cr3t-value")
        );
    }
}
