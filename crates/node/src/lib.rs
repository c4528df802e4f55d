//! The Millrace node: configuration, API layer, router, metadata and shard state machines.
//! The `millrace` binary (`src/main.rs`) is a thin shell over this library.

pub mod api;
pub mod config_file;
pub mod dev;
pub mod health;
pub mod messages;
pub mod metadata;
pub mod server;
pub mod shard;
