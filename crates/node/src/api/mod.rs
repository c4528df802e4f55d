//! The API layer: public gRPC, node-to-node gRPC and the HTTP port (health, status and the
//! Kinesis API).

pub mod access;
pub mod console;
pub mod consumers;
pub mod error;
pub mod groups;
pub mod grpc;
pub mod http;
pub mod internal;
pub mod iterator;
pub mod kinesis;
pub mod records;
pub mod shards;
