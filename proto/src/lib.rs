//! Parley's wire contracts: the four gRPC services and the bus envelope.
//!
//! The modules are generated at build time from the `.proto` files beside this
//! crate; [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

#![allow(clippy::all, missing_docs)]

/// Encoded `FileDescriptorSet` of every Parley proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/parley_descriptor.bin"));

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("parley.auth.v1");
    }
}

pub mod chat {
    pub mod v1 {
        tonic::include_proto!("parley.chat.v1");
    }
}

pub mod ai {
    pub mod v1 {
        tonic::include_proto!("parley.ai.v1");
    }
}

pub mod presence {
    pub mod v1 {
        tonic::include_proto!("parley.presence.v1");

        /// Most connections one `Renew` or `Release` may name.
        pub const MAX_CONNS_PER_CALL: usize = 10_000;
        /// Most users one `GetPresence` or `Watch` may name.
        pub const MAX_USERS_PER_CALL: usize = 1_000;
        /// Most leases one `Register` call may hold.
        pub const MAX_LEASES_PER_CALL: usize = 1_000;
    }
}

pub mod bus {
    pub mod v1 {
        tonic::include_proto!("parley.bus.v1");
    }
}
