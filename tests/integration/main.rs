//! The one integration-test binary (one link instead of many on small
//! machines). Each module is a suite; `support` holds the `TestApp` builder.
//!
//! By default every app runs on a fresh SQLite file; with the `it-postgres`
//! feature the same suites run on PostgreSQL, each app in a fresh database.
//! With `it-kafka`, the Kafka bus's suites run too, each against a tansu
//! broker of its own; with `it-etcd`, the etcd registry's, each against an
//! etcd server of its own; with `it-smtp`, identity's mail goes to an
//! aiosmtpd server of each test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "the tests set their scene with the wall clock"
)]

mod binary;
mod servers;
mod support;

mod audit;
mod auth;
mod authz;
mod authz_admin;
mod crossing;
mod edge;
#[cfg(feature = "it-etcd")]
mod etcd;
mod gateway;
mod identity_grpc;
mod identity_http;
#[cfg(feature = "it-kafka")]
mod kafka;
mod kernel;
#[cfg(feature = "it-smtp")]
mod mail;
mod oidc;
mod openapi;
mod overload;
#[cfg(feature = "it-postgres")]
mod postgres;
mod process;
#[cfg(feature = "it-redis")]
mod redis;
mod tls;
mod tracing;
