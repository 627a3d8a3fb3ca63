//! Users as the service speaks of them: ids, status, the user itself, a
//! registration, and the rules a user's email and display name keep.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::IdentityError;
use super::password::Password;
use super::store::UserRow;

/// Longest email address accepted (RFC 5321 path limit).
pub(super) const MAX_EMAIL: usize = 254;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;
/// Most ids one `GetUsers` call may ask for.
pub const MAX_BATCH: usize = 500;

/// A user id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub Uuid);

impl UserId {
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        Uuid::parse_str(text)
            .map(UserId)
            .map_err(|_| IdentityError::invalid("id", "not a valid user id"))
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        match text {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            _ => Err(IdentityError::invalid(
                "status",
                "must be \"active\" or \"disabled\"",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }
}

/// A user as the outside sees it: never the password hash.
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub display_name: String,
    pub status: UserStatus,
    pub email_verified: bool,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl TryFrom<&UserRow> for User {
    type Error = IdentityError;

    fn try_from(row: &UserRow) -> Result<Self, IdentityError> {
        Ok(User {
            id: UserId(
                Uuid::parse_str(&row.id).map_err(|e| IdentityError::Internal(e.to_string()))?,
            ),
            email: row.email.clone(),
            display_name: row.display_name.clone(),
            status: UserStatus::parse(&row.status)
                .map_err(|e| IdentityError::Internal(e.to_string()))?,
            email_verified: row.email_verified,
            locked_until: row.locked_until.map(|t| t.and_utc()),
            created_at: row.created_at.and_utc(),
            updated_at: row.updated_at.and_utc(),
            version: row.version,
        })
    }
}

/// What `register` needs.
pub struct Registration {
    pub email: String,
    pub password: Password,
    pub display_name: String,
}

pub fn validate_email(email: &str) -> Result<String, IdentityError> {
    let email = email.trim();
    if email.is_empty() {
        return Err(IdentityError::invalid("email", "must not be empty"));
    }
    if email.len() > MAX_EMAIL {
        return Err(IdentityError::invalid(
            "email",
            format!("must be at most {MAX_EMAIL} bytes long"),
        ));
    }
    if !email_address::EmailAddress::is_valid(email) {
        return Err(IdentityError::invalid(
            "email",
            "is not a valid email address",
        ));
    }
    Ok(email.to_owned())
}

pub fn validate_display_name(name: &str) -> Result<String, IdentityError> {
    // Judged as sent, before trimming: the API document states these
    // rules of the value a client sends (see `http.rs`).
    if name.chars().any(char::is_control) {
        return Err(IdentityError::invalid(
            "display_name",
            "must not contain control characters",
        ));
    }
    if name.chars().count() > MAX_DISPLAY_NAME {
        return Err(IdentityError::invalid(
            "display_name",
            format!("must be at most {MAX_DISPLAY_NAME} characters long"),
        ));
    }
    let name = name.trim();
    if name.is_empty() {
        return Err(IdentityError::invalid("display_name", "must not be empty"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_checked() {
        assert_eq!(
            validate_email("  Ann@Example.org ").unwrap(),
            "Ann@Example.org"
        );
        assert!(validate_email("not-an-email").is_err());
        assert!(validate_email("").is_err());
        let long = format!("{}@example.org", "a".repeat(250));
        assert!(validate_email(&long).is_err());
    }

    #[test]
    fn display_names_are_bounded_and_printable() {
        assert_eq!(validate_display_name(" Ann ").unwrap(), "Ann");
        assert!(validate_display_name("   ").is_err());
        assert!(validate_display_name(&"x".repeat(101)).is_err());
        assert!(validate_display_name("a\u{0}b").is_err());
        // Judged as sent: a control character is refused even where
        // trimming would take it away.
        assert!(validate_display_name("Ann\n").is_err());
        assert!(validate_display_name(&format!(" {}", "x".repeat(100))).is_err());
    }
}
