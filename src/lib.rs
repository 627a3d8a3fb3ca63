//! gatehouse: an API gateway and the core identity-platform services, in one
//! crate. Cargo features pick which services and which backends are compiled
//! in; the `bin/` targets are thin mains over the `run` functions here.
//!
//! Module map:
//! - [`kernel`]: infrastructure every service shares and nothing else
//!   (config layers, telemetry, metrics, health, serving and the HTTP/1.1
//!   loop, the HTTP wire's rules and limits for servers and clients alike,
//!   I/O threads, database, registry, RPC clients, bus, outbox, cache, the
//!   allocator).
//! - [`config`]: the whole configuration of a process: the kernel's sections
//!   and one section per service.
//! - [`middleware`]: what every public API shares: access tokens, the
//!   bearer-token check, rate limits, permission names and the client that
//!   asks authz.
//! - [`events`]: the catalogue of events: each event's name, payload type,
//!   producer and consumers, defined once.
//! - [`proto`]: the code generated from `proto/` (messages, gRPC clients and
//!   servers).
//! - [`platform`]: starting services in a process: the all-in-one wiring that
//!   starts every compiled-in service, and the single-service mains.
//! - `identity` (feature `identity`): users, registration, passwords, resets,
//!   verification, sign-in throttling.
//! - `auth` (feature `auth`): logins, access and refresh tokens, sessions,
//!   revocation, signing keys.
//! - `gateway` (feature `gateway`): the single entry point: routes, token
//!   checks at the edge, rate limits, CORS, load balancing, the merged API
//!   document.
//!
//! - `authz` (feature `authz`): roles, groups, bindings and permission
//!   checks that say why; the admin API and the checks the other services
//!   and the gateway ask for.
//!
//! - `audit` (feature `audit`): the tamper-evident audit log; so far its
//!   chain, its store and its verification.

#![cfg_attr(
    test,
    allow(
        clippy::disallowed_methods,
        reason = "unit tests set their scene with the wall clock"
    )
)]

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!(
    "gatehouse needs at least one database backend: enable the `sqlite` or `postgres` feature."
);

#[cfg(not(any(
    feature = "gateway",
    feature = "auth",
    feature = "identity",
    feature = "authz",
    feature = "audit"
)))]
compile_error!(
    "gatehouse needs at least one service: enable `identity` (or `all`, the default) among the features."
);

/// mimalloc for small blocks, the system allocator for large ones (see
/// [`kernel::alloc`]).
#[global_allocator]
static ALLOCATOR: kernel::alloc::Allocator = kernel::alloc::Allocator;

pub mod config;
pub mod events;
pub mod kernel;
pub mod middleware;
pub mod platform;
pub mod proto;

#[cfg(feature = "audit")]
pub mod audit;
#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "authz")]
pub mod authz;
#[cfg(feature = "gateway")]
pub mod gateway;
#[cfg(feature = "identity")]
pub mod identity;
