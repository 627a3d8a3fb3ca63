//! `gatehouse-gateway`: the gateway alone, in its own process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "gatehouse-gateway", version, about = "gatehouse gateway")]
struct Cli {
    /// TOML config file; `GATEHOUSE_*` environment variables override it.
    #[arg(long, short, env = "GATEHOUSE_CONFIG_FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(gatehouse::platform::serve(
                cli.config.as_deref(),
                "gatehouse-gateway",
                &[gatehouse::platform::Service::Gateway],
                true,
            ))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
