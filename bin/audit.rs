//! `gatehouse-audit`: the audit service alone, in its own process.

fn main() -> std::process::ExitCode {
    gatehouse::platform::service_main("gatehouse-audit", gatehouse::platform::Service::Audit)
}
