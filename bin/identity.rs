//! `gatehouse-identity`: the identity service alone, in its own process.

fn main() -> std::process::ExitCode {
    gatehouse::platform::service_main("gatehouse-identity", gatehouse::platform::Service::Identity)
}
