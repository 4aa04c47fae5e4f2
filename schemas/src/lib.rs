//! The contracts of tidings: Avro schemas for every Kafka topic (with the
//! Confluent wire-format codec that reads and writes them) and the gRPC API
//! (`tidings.v1`).

pub mod catalog;
pub mod channel;
pub mod codec;
pub mod ids;
pub mod records;
pub mod registry;
pub mod tracking_link;
pub mod web_push;

pub use catalog::{AvroRecord, CATALOG, Label, UNCOUNTED};
pub use channel::Channel;
pub use codec::{AvroCodec, CodecError};
pub use registry::{RegistryError, SchemaRegistry};

/// Generated gRPC types and services, package `tidings.v1`.
pub mod proto {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("tidings.v1");
    }

    /// The encoded `FileDescriptorSet` of every proto, for gRPC reflection
    /// and foreign clients.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tidings_descriptor.bin"));
}
