//! The OpenID Connect provider: applications sign their users in through
//! auth with standard OpenID Connect, on hosted pages.
//!
//! Rooms:
//! - `config.rs`: the `[auth.oidc]` section and the issuer;
//! - `clients.rs`: a client, its secret, redirect URI matching; `spec.rs`:
//!   what a registration may say; `registry.rs`: the registrations;
//! - `service.rs`: the provider and what its parts share (userinfo);
//! - `authorize.rs`: an authorization request, checked; `flow.rs`: the
//!   browser's way from it to a code; `browser.rs`: cookies, CSRF and
//!   browser sessions; `pages.rs`: the hosted pages;
//! - `logout.rs`: RP-initiated logout;
//! - `grants.rs`: the token endpoint's grants; `client_auth.rs`: client
//!   authentication; `id_token.rs`: the tokens a grant hands out; `tokens.rs`: introspection and
//!   revocation;
//! - `http.rs`: the protocol's routes; `admin.rs`: the JSON API of
//!   clients and consents; `error.rs`: OAuth's error responses;
//! - `store.rs`: the provider's tables;
//! - `jws.rs`: ID tokens' signatures; `keys.rs`: the ID-token keys'
//!   storage and lifecycle.

pub mod admin;
pub mod authorize;
pub mod browser;
pub mod client_auth;
pub mod clients;
pub mod config;
pub mod error;
pub mod flow;
pub mod grants;
pub mod http;
pub mod id_token;
pub mod jws;
pub mod keys;
pub mod logout;
pub mod pages;
pub mod registry;
pub mod service;
pub mod spec;
pub(in crate::auth) mod store;
pub mod tokens;

pub use service::Provider;
