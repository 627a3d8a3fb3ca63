//! The OpenID Connect provider: applications sign their users in through
//! auth with standard OpenID Connect.
//!
//! Rooms: `jws.rs` (ID tokens' signatures and the keys' public halves),
//! `keys.rs` (the ID-token keys' storage and lifecycle).

pub mod jws;
pub mod keys;
