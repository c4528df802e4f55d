//! The metadata group: members, streams, shards and placement.

pub mod access;
pub mod account;
pub mod autoscale;
pub mod groups;
pub mod machine;
pub mod placement;
pub mod reshard;
pub mod state;
pub mod tags;
pub mod write_routes;
