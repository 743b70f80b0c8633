//! Generated gRPC types for `paygate.v1`.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("paygate.v1");
}

/// Encoded descriptors of every paygate proto (and its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/paygate_descriptor.bin"));
