//! The `[identity.mail]` config section: how mail leaves, who it is from,
//! what it says, and how a failed delivery is retried.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::kernel::config::ConfigError;

/// How identity's mail (reset and verification links) reaches users.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `log` writes each link to the log: for development on one machine
    /// only, refused for a process that listens beyond loopback. `smtp`
    /// sends mail through `[identity.mail.smtp]`.
    pub transport: Transport,
    /// The From of every mail, e.g. `Example <no-reply@example.org>`.
    pub from: String,
    pub smtp: SmtpConfig,
    pub templates: Templates,
    /// The first retry of a failed delivery waits this long; each one after
    /// waits twice as long as the one before, up to `retry_max_ms`. A mail
    /// is retried until its link expires.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Log,
            from: "gatehouse <no-reply@localhost>".into(),
            smtp: SmtpConfig::default(),
            templates: Templates::default(),
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Log,
    Smtp,
}

/// The mail server identity submits to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub host: String,
    /// 587 for STARTTLS, 465 for TLS; 25 to a relay on this machine.
    pub port: u16,
    pub security: Security,
    /// Signs in with this user name and the password below; no sign-in
    /// when empty.
    pub username: String,
    /// The environment variable holding the password.
    pub password_env: String,
    /// A file holding the password (a trailing newline is dropped); read
    /// when set, in place of `password_env`.
    pub password_file: Option<PathBuf>,
    /// Never read: a password does not belong in a config file. Present
    /// only to refuse it with a message saying where it goes.
    #[serde(skip_serializing)]
    pub password: Option<serde::de::IgnoredAny>,
    /// A PEM file of certificate authorities trusted besides the system's,
    /// for a mail server with a private certificate.
    pub ca_file: Option<PathBuf>,
    /// The longest one delivery may take, connecting included.
    pub timeout_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 587,
            security: Security::Starttls,
            username: String::new(),
            password_env: "GATEHOUSE_SMTP_PASSWORD".into(),
            password_file: None,
            password: None,
            ca_file: None,
            timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which the server must offer.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only to a mail server on this machine (loopback).
    None,
}

/// The mail of each kind. In subjects and bodies, `{link}` is the link,
/// `{email}` the recipient's address and `{expires}` when the link stops
/// working (UTC).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Templates {
    pub password_reset: Template,
    pub email_verification: Template,
    pub account_exists: Template,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub subject: String,
    pub body: String,
}

impl Default for Templates {
    fn default() -> Self {
        let template = |subject: &str, body: &str| Template {
            subject: subject.into(),
            body: body.into(),
        };
        Self {
            password_reset: template(
                "Reset your password",
                "Someone asked to reset the password of the account at {email}.\n\n\
                 To choose a new password, open this link before {expires}:\n\n{link}\n\n\
                 If it was not you, ignore this mail: your password stays as it is.\n",
            ),
            email_verification: template(
                "Confirm your email address",
                "To confirm that {email} is your address, open this link before {expires}:\n\n\
                 {link}\n\nIf you did not make an account, ignore this mail.\n",
            ),
            account_exists: template(
                "Someone tried to register your address",
                "Someone tried to make an account at {email}, which already has one.\n\n\
                 If it was you and you forgot your password, you can reset it here:\n\n{link}\n\n\
                 If it was not you, ignore this mail: nothing has changed.\n",
            ),
        }
    }
}

/// The placeholders a template may hold.
const PLACEHOLDERS: [&str; 3] = ["link", "email", "expires"];

impl Template {
    /// The subject and body with their placeholders filled.
    pub fn render(&self, link: &str, email: &str, expires: &str) -> (String, String) {
        let value = |word: &str| match word {
            "link" => Some(link),
            "email" => Some(email),
            "expires" => Some(expires),
            _ => None,
        };
        // Checked at start (`MailConfig::check`): every placeholder is
        // known, so nothing is left unfilled.
        let fill = |text: &str| fill(text, value).unwrap_or_else(|_| text.to_owned());
        (fill(&self.subject), fill(&self.body))
    }

    /// Refuses a template naming an unknown placeholder, a subject of more
    /// than one line, or a body without its link.
    fn check(&self, name: &str) -> Result<(), ConfigError> {
        let known = |word: &str| PLACEHOLDERS.contains(&word).then_some("");
        for (part, text) in [("subject", &self.subject), ("body", &self.body)] {
            fill(text, known).map_err(|word| {
                ConfigError(format!(
                    "identity.mail.templates.{name}.{part}: unknown placeholder {{{word}}}; \
                     the placeholders are {{link}}, {{email}} and {{expires}}"
                ))
            })?;
        }
        if self.subject.contains(['\n', '\r']) {
            return Err(ConfigError(format!(
                "identity.mail.templates.{name}.subject: a subject is one line"
            )));
        }
        if !self.body.contains("{link}") {
            return Err(ConfigError(format!(
                "identity.mail.templates.{name}.body: the body must hold {{link}}"
            )));
        }
        Ok(())
    }
}

/// `text` with each `{word}` replaced by `value(word)`, in one pass (so a
/// value holding braces is never read as a placeholder); the first word
/// `value` does not know is the error.
fn fill<'a, 't>(text: &'t str, value: impl Fn(&str) -> Option<&'a str>) -> Result<String, &'t str> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').unwrap_or(after.len());
        let word = &after[..close];
        out.push_str(value(word).ok_or(word)?);
        rest = after.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

impl MailConfig {
    /// Refuses what cannot work, before anything is sent: a password in
    /// the config file, a from-address that is not one, templates with
    /// unknown placeholders, mail in the clear to another machine.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.smtp.password.is_some() {
            return Err(ConfigError(format!(
                "identity.mail.smtp.password is not read from config: put the password in the \
                 environment variable named by identity.mail.smtp.password_env (now {}) or in \
                 the file named by identity.mail.smtp.password_file",
                self.smtp.password_env
            )));
        }
        self.from.parse::<lettre::message::Mailbox>().map_err(|e| {
            ConfigError(format!(
                "identity.mail.from: {:?} is not a mail address: {e}",
                self.from
            ))
        })?;
        let t = &self.templates;
        t.password_reset.check("password_reset")?;
        t.email_verification.check("email_verification")?;
        t.account_exists.check("account_exists")?;
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err(ConfigError(
                "identity.mail: retry_initial_ms must be above 0 and retry_max_ms at least as \
                 long"
                    .into(),
            ));
        }
        if self.transport == Transport::Smtp
            && self.smtp.security == Security::None
            && !is_loopback_host(&self.smtp.host)
        {
            return Err(ConfigError(format!(
                "identity.mail.smtp.security = \"none\" sends links in the clear: it is allowed \
                 only to a mail server on this machine, not to {}; use \"starttls\" or \"tls\"",
                self.smtp.host
            )));
        }
        Ok(())
    }
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_cannot_work_is_refused_with_where_to_fix_it() {
        assert!(MailConfig::default().check().is_ok());
        let with = |f: fn(&mut MailConfig)| {
            let mut c = MailConfig::default();
            f(&mut c);
            c.check().unwrap_err().to_string()
        };
        let e = with(|c| c.smtp.password = Some(serde::de::IgnoredAny));
        assert!(e.contains("GATEHOUSE_SMTP_PASSWORD"), "{e}");
        let e = with(|c| c.from = "not an address".into());
        assert!(e.contains("identity.mail.from"), "{e}");
        let e = with(|c| c.templates.password_reset.body = "Hello {name}: {link}".into());
        assert!(e.contains("{name}"), "{e}");
        let e = with(|c| c.templates.email_verification.body = "no link here".into());
        assert!(e.contains("must hold {link}"), "{e}");
        let e = with(|c| c.templates.account_exists.subject = "a\r\nBcc: x@y".into());
        assert!(e.contains("one line"), "{e}");
        let e = with(|c| {
            c.transport = Transport::Smtp;
            c.smtp.security = Security::None;
            c.smtp.host = "mail.example.org".into();
        });
        assert!(e.contains("in the clear"), "{e}");
        let local = MailConfig {
            transport: Transport::Smtp,
            smtp: SmtpConfig {
                security: Security::None,
                host: "127.0.0.1".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(local.check().is_ok());
    }

    #[test]
    fn templates_fill_their_placeholders() {
        let t = Templates::default().password_reset;
        let (subject, body) = t.render("https://x/r?token=abc", "ann@example.org", "noon");
        assert_eq!(subject, "Reset your password");
        assert!(body.contains("https://x/r?token=abc"));
        assert!(body.contains("ann@example.org") && body.contains("noon"));
        assert!(!body.contains('{'));
        // A value is never read as a placeholder.
        let (_, body) = t.render("L", "{expires}@example.org", "noon");
        assert!(body.contains("{expires}@example.org"), "{body}");
    }
}
