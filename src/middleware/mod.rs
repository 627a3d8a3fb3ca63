//! The shared tower/axum middleware every public API uses, one file per
//! concern. The gateway stacks the same pieces at the edge.
//!
//! - [`token`]: PASETO v4.public access tokens: the claims, signing and the
//!   pure verification every checker shares.
//! - [`bearer`]: the bearer-token check: keys fetched from auth over gRPC and
//!   cached, verified tokens cached, revoked sessions learned from the bus,
//!   and a [`token::Principal`] put into each request.
//! - [`ids`]: user and session ids, each a type of its own.
//! - [`recent`]: a small per-thread table of tokens that verified lately, in
//!   front of the bearer check's shared cache.
//! - [`names`]: permission and resource names, as authz and those who ask
//!   it write them.
//! - [`permit`]: asking authz whether a user may do something, with the
//!   answers kept a short while and dropped on authz's change events.
//! - [`ratelimit`]: GCRA rate limits by client or user, with bounded state.

pub mod bearer;
pub mod ids;
pub mod names;
pub mod permit;
pub mod ratelimit;
pub mod recent;
pub mod token;
