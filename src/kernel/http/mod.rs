//! The server side of HTTP, shared by every service and the gateway.
//!
//! - `server`: a service's server: its axum router and gRPC routes behind
//!   the shared middleware, bound, registered and stopped gracefully.
//! - `connection`: what every connection passes before a service sees a
//!   request (the checks of `wire`, the peer's address).
//! - `h1_server/`: the server half of the HTTP/1.1 wire, a loop per
//!   connection that hands anything unusual to hyper; the client half is
//!   `gateway::h1_client`.
//! - `wire/`: the rules both halves follow: framing, limits, which heads
//!   and fields are refused, and how heads are written.
//! - `deadline`: the per-connection timer of the header read.
//! - `io_threads`: the threads connections are served on, pinned to cores.
//! - `tls`: certificates for TLS at the edge, reloaded when their files change.
//! - `observe`: request ids, tracing spans, metrics and the client address
//!   of each request.
//! - `ops`: the operator listener (`/metrics`, health).

pub mod connection;
pub mod deadline;
pub mod h1_server;
pub mod io_threads;
pub mod observe;
pub mod ops;
pub mod server;
pub mod tls;
pub mod wire;

/// The longest the gateway answers a public response from its own copy
/// (`gateway/proxy/kept.rs`); a service whose `max-age` must hold from
/// the moment a change is made leaves it out.
pub const KEPT_AT_THE_EDGE: std::time::Duration = std::time::Duration::from_secs(1);
