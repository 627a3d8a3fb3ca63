//! The authorization service: what a subject may do. Permissions are
//! `resource_type:action` strings with wildcards, roles are named sets of
//! them, groups of users may nest, and bindings give a user or a group a
//! role everywhere, on one resource type, or on one resource and what lies
//! under it.
//!
//! Rooms so far: `model.rs`, the model and how a check is decided, with
//! the chain that decided it, on one in-memory revision of the policy.

pub mod model;
