//! `gatehouse`: the all-in-one platform (every compiled-in service in one
//! process on the embedded defaults) and the operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gatehouse", version, about = "gatehouse identity platform")]
struct Cli {
    /// TOML config file; `GATEHOUSE_*` environment variables override it.
    #[arg(long, short, global = true, env = "GATEHOUSE_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every compiled-in service (the default).
    Serve,
    /// Password hashing tools.
    Hash {
        #[command(subcommand)]
        command: HashCommand,
    },
    /// Token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Administrators: the first account, and roles granted by hand.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Keys that services sign their calls to each other with.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// The OpenID Connect provider.
    Oidc {
        #[command(subcommand)]
        command: OidcCommand,
    },
}

#[derive(Subcommand)]
enum OidcCommand {
    /// Applications that sign their users in through the provider.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client and print its id and its secret, which is shown
    /// this once. A confidential client may use the authorization code,
    /// refresh token and client credentials grants; a public one (a
    /// browser or native app, `--public`) the first two, with PKCE.
    Create {
        /// The name shown on the consent page.
        #[arg(long)]
        name: String,
        /// Where the provider may send the browser back with a code; matched
        /// exactly (a loopback http URI with any port).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Where the provider may send the browser after signing out.
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// Origins whose scripts call the token and userinfo endpoints.
        #[arg(long = "web-origin")]
        web_origins: Vec<String>,
        /// A client that holds no secret.
        #[arg(long)]
        public: bool,
        /// A client of this platform's own: its users are not asked to consent.
        #[arg(long)]
        first_party: bool,
        /// The grants allowed, comma-separated (default: every one its kind may use).
        #[arg(long, value_delimiter = ',')]
        grants: Option<Vec<String>>,
        /// The ID tokens' algorithm: RS256 (default), ES256 or EdDSA.
        #[arg(long)]
        id_token_alg: Option<String>,
        /// Print `{"client_id", "client_secret"}` as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Make a key for each service in an empty directory: `<service>.key`
    /// (secret, owner-only) and `services.pub` (every public key). Give each
    /// machine the keys of the services it runs and `services.pub`, and
    /// point rpc.credentials_dir at them.
    Issue {
        #[arg(long)]
        out: PathBuf,
        /// The services to make keys for (all by default).
        #[arg(long, value_delimiter = ',', default_values_t = gatehouse::kernel::credentials::SERVICES.map(str::to_owned))]
        services: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the whole chain; exit 1 and name the first entry that was
    /// altered, deleted or inserted.
    Verify,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make an account that holds the `admin` role. The password is read
    /// from the terminal, or from the first line of standard input.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "Administrator")]
        name: String,
    },
    /// Bind a role to an account, everywhere.
    Grant {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Publish a new signing key; it signs once verifiers have had time to fetch it.
    Rotate,
}

#[derive(Subcommand)]
enum HashCommand {
    /// Print scrypt parameters that take about the given time per hash here.
    Calibrate {
        /// Wanted time per hash, in milliseconds.
        #[arg(long, default_value_t = 250)]
        target_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Hash {
            command: HashCommand::Calibrate { target_ms },
        }) => calibrate(target_ms),
        Some(Command::Keys {
            command: KeysCommand::Rotate,
        }) => rotate(cli.config),
        Some(Command::Admin { command }) => admin(cli.config, command),
        Some(Command::Audit {
            command: AuditCommand::Verify,
        }) => audit_verify(cli.config),
        Some(Command::Credentials {
            command: CredentialsCommand::Issue { out, services },
        }) => issue_credentials(&out, &services),
        Some(Command::Oidc {
            command: OidcCommand::Client { command },
        }) => oidc_client(cli.config, command),
        None | Some(Command::Serve) => serve(cli.config),
    }
}

fn issue_credentials(out: &std::path::Path, services: &[String]) -> ExitCode {
    use gatehouse::kernel::credentials::{Keyring, SERVICES, TRUST_FILE};
    if let Some(unknown) = services.iter().find(|s| !SERVICES.contains(&s.as_str())) {
        return fail(&anyhow::anyhow!(
            "no service is called {unknown}; the services are {}",
            SERVICES.join(", ")
        ));
    }
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    match Keyring::issue(out, &names) {
        Ok(()) => {
            println!(
                "made {} keys and {TRUST_FILE} in {}",
                names.join(", "),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&anyhow::anyhow!(e)),
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&e.into()),
    };
    let services = gatehouse::platform::Service::compiled();
    runtime
        .block_on(gatehouse::platform::serve(
            config.as_deref(),
            "gatehouse",
            &services,
            false,
        ))
        .map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS)
}

#[cfg(feature = "auth")]
fn rotate(config: Option<PathBuf>) -> ExitCode {
    let result = run_command(async {
        let config = gatehouse::config::Config::load(config.as_deref())?;
        let ctx = gatehouse::platform::context(&config)?;
        gatehouse::auth::rotate_keys(&ctx, &config.auth).await
    });
    match result {
        Ok(kid) => {
            println!("published {kid}; it signs after auth.key_cache_ttl_secs");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

#[cfg(not(feature = "auth"))]
fn rotate(_config: Option<PathBuf>) -> ExitCode {
    fail(&anyhow::anyhow!("this build has no auth service"))
}

#[cfg(feature = "auth")]
fn oidc_client(config: Option<PathBuf>, command: ClientCommand) -> ExitCode {
    let ClientCommand::Create {
        name,
        redirect_uris,
        post_logout_redirect_uris,
        web_origins,
        public,
        first_party,
        grants,
        id_token_alg,
        json,
    } = command;
    let spec = gatehouse::auth::oidc::clients::ClientSpec {
        name,
        redirect_uris,
        post_logout_redirect_uris,
        web_origins,
        grant_types: grants,
        scopes: None,
        id_token_signed_response_alg: id_token_alg,
        first_party,
        public,
        require_pkce: None,
    };
    let result = run_command(async {
        let config = gatehouse::config::Config::load(config.as_deref())?;
        let ctx = gatehouse::platform::context(&config)?;
        gatehouse::auth::register_client(&ctx, &config.auth, spec).await
    });
    match result {
        Ok(issued) if json => {
            println!(
                "{}",
                serde_json::json!({
                    "client_id": issued.client.id,
                    "client_secret": issued.secret,
                })
            );
            ExitCode::SUCCESS
        }
        Ok(issued) => {
            println!("client_id: {}", issued.client.id);
            match issued.secret {
                Some(secret) => {
                    println!("client_secret: {secret}\n(the secret is shown this once)")
                }
                None => println!("a public client: no secret; it proves itself with PKCE"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

#[cfg(not(feature = "auth"))]
fn oidc_client(_config: Option<PathBuf>, _command: ClientCommand) -> ExitCode {
    fail(&anyhow::anyhow!("this build has no auth service"))
}

#[cfg(feature = "identity")]
fn calibrate(target_ms: u64) -> ExitCode {
    let target = std::time::Duration::from_millis(target_ms);
    let (r, p) = (8, 1);
    match gatehouse::identity::calibrate::calibrate(target, r, p) {
        Ok(results) => {
            for (log_n, ms) in &results {
                println!(
                    "log_n = {log_n:>2}  r = {r}  p = {p}  {ms:>8.1} ms/hash  {} MiB",
                    ((128u64 << log_n) * u64::from(r)) >> 20
                );
            }
            let best = results.iter().min_by(|a, b| {
                (a.1 - target_ms as f64)
                    .abs()
                    .total_cmp(&(b.1 - target_ms as f64).abs())
            });
            if let Some((log_n, ms)) = best {
                println!("\n# closest to {target_ms} ms on this machine ({ms:.1} ms):");
                println!("[identity.scrypt]\nlog_n = {log_n}\nr = {r}\np = {p}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&anyhow::anyhow!(e)),
    }
}

#[cfg(not(feature = "identity"))]
fn calibrate(_target_ms: u64) -> ExitCode {
    fail(&anyhow::anyhow!("this build has no identity service"))
}

#[cfg(all(feature = "identity", feature = "authz"))]
fn admin(config: Option<PathBuf>, command: AdminCommand) -> ExitCode {
    let result = run_command(async {
        let config = gatehouse::config::Config::load(config.as_deref())?;
        let ctx = gatehouse::platform::context(&config)?;
        let (email, role) = match command {
            AdminCommand::Create { email, name } => {
                let password = read_password()?;
                let user = gatehouse::identity::create_account(
                    &ctx,
                    config.identity.clone(),
                    &email,
                    password,
                    &name,
                )
                .await?;
                println!("created {} ({})", user.email, user.id);
                (email, "admin".to_owned())
            }
            AdminCommand::Grant { email, role } => (email, role),
        };
        let user = gatehouse::identity::find_account(&ctx, &email)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no account has the address {email}"))?;
        match gatehouse::authz::grant(&ctx, user.0, &role).await? {
            Some(revision) => println!("granted {role} to {email} at revision {revision}"),
            None => println!("{email} holds {role} already"),
        }
        anyhow::Ok(())
    });
    result.map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS)
}

#[cfg(not(all(feature = "identity", feature = "authz")))]
fn admin(_config: Option<PathBuf>, _command: AdminCommand) -> ExitCode {
    fail(&anyhow::anyhow!(
        "this build has no identity or no authz service"
    ))
}

/// The password, from the terminal without echo, or else the first line
/// of standard input; never from an argument, which other users of the
/// machine could read.
#[cfg(all(feature = "identity", feature = "authz"))]
fn read_password() -> anyhow::Result<gatehouse::identity::password::Password> {
    use std::io::IsTerminal as _;
    let text = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    Ok(gatehouse::identity::password::Password::new(text))
}

#[cfg(feature = "audit")]
fn audit_verify(config: Option<PathBuf>) -> ExitCode {
    use gatehouse::audit::model::Finding;
    let result = run_command(async {
        let config = gatehouse::config::Config::load(config.as_deref())?;
        let key = gatehouse::audit::keys::AuditKey::load(&config.data_dir)?;
        let db = gatehouse::audit::open_db(&config.database, &config.data_dir).await?;
        let witness = gatehouse::audit::witness::read(&gatehouse::audit::witness::path(
            &config.audit.witness_path,
            &config.data_dir,
        ))?;
        anyhow::Ok(
            db.run(move |conn| gatehouse::audit::store::verify(conn, &key, witness.as_ref()))
                .await?,
        )
    });
    match result {
        Ok(Ok(count)) => {
            println!("the audit log holds: {count} entries verified");
            ExitCode::SUCCESS
        }
        Ok(Err(finding)) => {
            let what = match &finding {
                Finding::ForgedCheckpoint(_) => "vouched for by a forged checkpoint",
                Finding::Forged(_) => "forged (its MAC does not hold)",
                other => other.kind(),
            };
            println!(
                "the audit log does not hold: entry {} was {what}",
                finding.seq()
            );
            ExitCode::FAILURE
        }
        Err(e) => fail(&e),
    }
}

#[cfg(not(feature = "audit"))]
fn audit_verify(_config: Option<PathBuf>) -> ExitCode {
    fail(&anyhow::anyhow!("this build has no audit service"))
}

/// Runs an operator command's `work` on a runtime of its own, then waits
/// for the runtime's blocking work (database connections among it) to end
/// before the process does.
fn run_command<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    result
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("gatehouse: {e:#}");
    ExitCode::FAILURE
}
