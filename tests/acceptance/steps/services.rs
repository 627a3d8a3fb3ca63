//! The backgrounds: the processes each feature runs against, started for
//! the scenario, or the shared replicated deployment when the run has one.

use cucumber::given;

use crate::binary::{self, free_port, static_registry};
use crate::{Platform, Service};

#[given("the identity service is running")]
fn running(world: &mut Platform) {
    if world.on_shared_deployment() {
        return;
    }
    let service = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        free_port(),
        &[],
    );
    world.identity_logs.push(service.process.log.clone());
    let base = world.keep(service);
    world.identity.push(base);
}

#[given("the identity and auth services are running")]
fn both_running(world: &mut Platform) {
    if world.on_shared_deployment() {
        return;
    }
    let (identity_port, auth_port) = (free_port(), free_port());
    // Reuse is detected at once (no grace window) to keep scenarios short.
    let grace = [("GATEHOUSE_AUTH__REFRESH_GRACE_SECS", "0".to_owned())];
    identity_and_auth(world, identity_port, auth_port, &grace);
}

#[given("the gateway, auth and identity services are running")]
fn three_running(world: &mut Platform) {
    if world.on_shared_deployment() {
        return;
    }
    let (identity_port, auth_port, gateway_port) = (free_port(), free_port(), free_port());
    identity_and_auth(world, identity_port, auth_port, &[]);
    let gateway = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-gateway"),
        "gateway",
        gateway_port,
        &static_registry(&[("auth", &[auth_port]), ("identity", &[identity_port])]),
    );
    let base = world.keep(gateway);
    world.gateway.push(base);
}

/// Identity and auth on the ports given, each finding the other through a
/// static registry; auth with `auth_env` besides.
fn identity_and_auth(
    world: &mut Platform,
    identity_port: u16,
    auth_port: u16,
    auth_env: &[(&'static str, String)],
) {
    let identity = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        identity_port,
        &static_registry(&[("auth", &[auth_port])]),
    );
    world.identity_logs.push(identity.process.log.clone());
    let base = world.keep(identity);
    world.identity.push(base);
    let mut env = static_registry(&[("identity", &[identity_port])]);
    env.extend(auth_env.iter().cloned());
    let auth = Service::spawn(
        env!("CARGO_BIN_EXE_gatehouse-auth"),
        "auth",
        auth_port,
        &env,
    );
    let base = world.keep(auth);
    world.auth.push(base);
}

#[given("the whole platform is running")]
async fn platform_running(world: &mut Platform) {
    if world.on_shared_deployment() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let process = binary::spawn_platform(env!("CARGO_BIN_EXE_gatehouse"), data.path(), &[]).await;
    world.admin_cli = Some((data.path().to_owned(), Vec::new()));
    let base = world.keep(Service {
        process,
        _data: data,
    });
    world.gateway.push(base);
}
