//! `gatehouse-authz`: the authz service alone, in its own process.

fn main() -> std::process::ExitCode {
    gatehouse::platform::service_main("gatehouse-authz", gatehouse::platform::Service::Authz)
}
