//! Mail submitted to a mail server over SMTP (lettre): STARTTLS or TLS
//! from the first byte, checked against the system's certificate
//! authorities and any in `ca_file`; signed in when a user name is set,
//! with a password from the environment or a file.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::response::Category;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{MailConfig, Security, Templates};
use super::notifier::{Notice, NoticeKind, Notifier, Undelivered};
use crate::kernel::config::ConfigError;

/// Submits each notice as a plain-text mail rendered from its template.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    templates: Templates,
}

impl Smtp {
    /// The transport `config` describes, once [`MailConfig::check`] has
    /// passed (see [`super::notifier`]); an error names what is missing or
    /// unreadable (the password, the CA file).
    pub(super) fn new(config: &MailConfig) -> Result<Self, ConfigError> {
        let smtp = &config.smtp;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .timeout(Some(Duration::from_secs(smtp.timeout_secs)));
        let tls = || -> Result<TlsParameters, ConfigError> {
            let mut params = TlsParameters::builder(smtp.host.clone());
            if let Some(path) = &smtp.ca_file {
                let pem = std::fs::read(path).map_err(|e| ca_file(path, e))?;
                let ca = Certificate::from_pem(&pem).map_err(|e| ca_file(path, e))?;
                params = params.add_root_certificate(ca);
            }
            params
                .build()
                .map_err(|e| ConfigError(format!("identity.mail.smtp: {e}")))
        };
        builder = builder.tls(match smtp.security {
            Security::Starttls => Tls::Required(tls()?),
            Security::Tls => Tls::Wrapper(tls()?),
            Security::None => Tls::None,
        });
        if !smtp.username.is_empty() {
            builder =
                builder.credentials(Credentials::new(smtp.username.clone(), password(config)?));
        }
        let from = config
            .from
            .parse()
            .map_err(|e| ConfigError(format!("identity.mail.from: {e}")))?;
        Ok(Smtp {
            transport: builder.build(),
            from,
            templates: config.templates.clone(),
        })
    }
}

/// The mail server's password: from `password_file` when set, else from
/// the variable `password_env` names. Never from the config file.
fn password(config: &MailConfig) -> Result<String, ConfigError> {
    let smtp = &config.smtp;
    if let Some(path) = &smtp.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "identity.mail.smtp.password_file {}: {e}",
                path.display()
            ))
        })?;
        return Ok(text.trim_end_matches(['\r', '\n']).to_owned());
    }
    std::env::var(&smtp.password_env).map_err(|_| {
        ConfigError(format!(
            "identity.mail.smtp.username is set but no password was found: set the \
             environment variable {} or identity.mail.smtp.password_file",
            smtp.password_env
        ))
    })
}

fn ca_file(path: &std::path::Path, e: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!(
        "identity.mail.smtp.ca_file {}: {e}",
        path.display()
    ))
}

#[async_trait]
impl Notifier for Smtp {
    async fn send(&self, notice: &Notice) -> Result<(), Undelivered> {
        let template = match notice.kind {
            NoticeKind::PasswordReset => &self.templates.password_reset,
            NoticeKind::EmailVerification => &self.templates.email_verification,
            NoticeKind::AccountExists => &self.templates.account_exists,
        };
        let expires = notice.expires_at.format("%Y-%m-%d %H:%M UTC").to_string();
        let (subject, body) = template.render(&notice.link, &notice.email, &expires);
        let to: Mailbox = notice
            .email
            .parse()
            .map_err(|e| Undelivered::Never(format!("the recipient's address: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| Undelivered::Never(format!("the mail could not be made: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            // 55x: this mailbox or this mail is refused for good.
            Err(e)
                if e.is_permanent()
                    && e.status()
                        .is_some_and(|c| c.category == Category::MailSystem) =>
            {
                Err(Undelivered::Never(e.to_string()))
            }
            Err(e) => Err(Undelivered::Later(e.to_string())),
        }
    }
}
