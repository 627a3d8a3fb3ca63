//! Code generated from `proto/` by `build.rs`: messages, tonic clients and servers.

/// The event envelope and payloads that travel on the bus.
pub mod events {
    pub mod v1 {
        tonic::include_proto!("gatehouse.events.v1");
    }
}

/// The identity service's internal gRPC contract.
pub mod identity {
    pub mod v1 {
        tonic::include_proto!("gatehouse.identity.v1");
    }
}

/// The auth service's internal gRPC contract.
pub mod auth {
    pub mod v1 {
        tonic::include_proto!("gatehouse.auth.v1");
    }
}

/// The authz service's internal gRPC contract.
pub mod authz {
    pub mod v1 {
        tonic::include_proto!("gatehouse.authz.v1");
    }
}

/// The audit service's internal gRPC contract.
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("gatehouse.audit.v1");
    }
}
