//! The Millrace node: configuration, API layer, router, metadata and shard state machines.
//! The `millrace` binary (`src/main.rs`) is a thin shell over this library.

pub mod api;
pub mod dev;
pub mod metadata;
pub mod server;
pub mod shard;
