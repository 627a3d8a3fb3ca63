//! `gatehouse-auth`: the auth service alone, in its own process.

fn main() -> std::process::ExitCode {
    gatehouse::platform::service_main("gatehouse-auth", gatehouse::platform::Service::Auth)
}
