//! The OpenID Connect provider: applications sign their users in through
//! auth with standard OpenID Connect.
//!
//! Rooms: `config.rs` (the `[auth.oidc]` section and the issuer),
//! `clients.rs` (what a client registration may say, secrets, redirect
//! URI matching), `registry.rs` (the clients' registrations), `service.rs` (the
//! provider's logic), `store.rs` (its
//! tables), `jws.rs` (ID tokens' signatures and the keys' public halves),
//! `keys.rs` (the ID-token keys' storage and lifecycle).

pub mod clients;
pub mod config;
pub mod jws;
pub mod keys;
pub mod registry;
pub mod service;
mod store;

pub use service::Provider;
