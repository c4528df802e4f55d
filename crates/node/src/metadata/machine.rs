//! The metadata group's state machine: [`MetaState`] behind a lock, with a watch that fires
//! whenever it changes, so the node can reconcile its shard replicas.

use std::sync::{Arc, RwLock};

use millrace_raft::types::LogId;
use millrace_raft::{GroupStateMachine, UnappliableEntry};
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
    fn apply(&mut self, log_id: &LogId, data: &[u8]) -> Result<Vec<u8>, UnappliableEntry> {
        // A command this binary does not know (written by a newer version during a rolling
        // upgrade) or a damaged one stops this replica: applying the rest without it would
        // leave this node's metadata silently different. Upgrading the node replays it.
        let cmd = serde_json::from_slice::<MetaCommand>(data).map_err(|e| UnappliableEntry {
            index: log_id.index,
            // Only where and what kind: serde's message may quote a value, a secret's too.
            reason: format!("metadata command does not decode: {}", serde_shape(&e)),
        })?;
        let response = self
            .shared
            .state
            .write()
            .expect("metadata lock")
            .apply(&cmd);
        self.shared.version.send_modify(|v| *v += 1);
        Ok(serde_json::to_vec(&response).expect("metadata responses serialise"))
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

    #[test]
    fn a_command_that_does_not_decode_stops_the_replica_instead_of_being_skipped() {
        let shared = MetaShared::new();
        let mut m = MetaMachine::new(shared.clone());
        let secret = r#"{"InitClusterSecret":{"secret_hex":"s3cr3t-value"}}"#;
        m.apply(&millrace_raft::types::log_id(1, 1, 1), secret.as_bytes())
            .expect("a known command applies");
        let version = *shared.version.borrow();
        // A command of a newer version (unknown to this binary), then a damaged one.
        for (index, data) in [
            (2, r#"{"SetSomethingNewer":{"value":"s3cr3t-value"}}"#),
            (3, r#"{"RemoveMember":{"node_id":"s3cr3t-value"}}"#),
        ] {
            let refused = m
                .apply(&millrace_raft::types::log_id(1, 1, index), data.as_bytes())
                .unwrap_err();
            assert_eq!(refused.index, index);
            assert!(
                refused.reason.contains("does not decode")
                    && !refused.to_string().contains("s3cr3t-value"),
                "{refused}"
            );
        }
        // Nothing changed: no state change was announced.
        assert_eq!(*shared.version.borrow(), version);
    }
}
