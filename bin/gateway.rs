//! `gatehouse-gateway`: the gateway alone, in its own process.

fn main() -> std::process::ExitCode {
    gatehouse::platform::service_main("gatehouse-gateway", gatehouse::platform::Service::Gateway)
}
