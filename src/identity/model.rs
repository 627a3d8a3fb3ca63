//! Users as the service speaks of them: ids, status, the user itself, a
//! registration, and the rules a user's email and display name keep.

use chrono::{DateTime, Utc};
use unicode_normalization::UnicodeNormalization as _;
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

/// An email address as stored and shown: trimmed and in Unicode
/// normalisation form KC, so that `ｒoot@example.org` (full-width) is
/// `root@example.org`; checked for form, with the forms that let one
/// mailbox pass for another refused: a quoted local part, an IP literal
/// for a domain, invisible or control characters.
pub fn validate_email(email: &str) -> Result<String, IdentityError> {
    let email: String = email.trim().nfkc().collect();
    let bad = |message: &str| Err(IdentityError::invalid("email", message));
    if email.is_empty() {
        return bad("must not be empty");
    }
    if email.len() > MAX_EMAIL {
        return Err(IdentityError::invalid(
            "email",
            format!("must be at most {MAX_EMAIL} bytes long"),
        ));
    }
    if email.chars().any(invisible) {
        return bad("must not contain invisible or control characters");
    }
    if email.starts_with('"') || email.contains("\"@") {
        return bad("must not have a quoted local part");
    }
    if email.contains("@[") {
        return bad("must name a domain, not an IP address");
    }
    if !email_address::EmailAddress::is_valid(&email) {
        return bad("is not a valid email address");
    }
    Ok(email)
}

/// The key an address is found by: its normal form (see
/// [`validate_email`]) in lower case. Every lookup by address uses it.
pub fn email_key(email: &str) -> String {
    email.trim().nfkc().collect::<String>().to_lowercase()
}

/// Characters a reader does not see, or that turn or break the text
/// around it: controls, format characters (bidi controls such as U+202E,
/// zero widths, tags, the soft hyphen) and the line and paragraph
/// separators U+2028 and U+2029.
fn invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    c.is_control()
        || matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
}

pub fn validate_display_name(name: &str) -> Result<String, IdentityError> {
    // Judged as sent, before trimming: the API document states these
    // rules of the value a client sends (see `http.rs`).
    if name.chars().any(invisible) {
        return Err(IdentityError::invalid(
            "display_name",
            "must not contain control characters or invisible formatting (bidi controls, zero widths, tags)",
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
    fn emails_that_pass_for_another_mailbox_are_normalised_or_refused() {
        // Full-width letters are the letters: one account, not two.
        assert_eq!(
            validate_email("\u{ff52}oot@example.org").unwrap(),
            "root@example.org"
        );
        assert_eq!(email_key(" \u{ff32}OOT@Example.org"), "root@example.org");
        for bad in [
            "\"root\"@example.org",
            "\"ro ot\"@example.org",
            "root@[127.0.0.1]",
            "root@[IPv6:::1]",
            "ro\u{200b}ot@example.org",
            "root\u{202e}@example.org",
        ] {
            assert!(validate_email(bad).is_err(), "{bad:?}");
        }
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
        // Text that reads otherwise than it is.
        for bad in [
            "Ann\u{202e}nimda",
            "Ad\u{200b}min",
            "root\u{200d}",
            "\u{2066}Ann\u{2069}",
            "Ann\u{e0041}",
            "Ann\u{feff}",
            "Ann\u{2028}Admin",
        ] {
            assert!(validate_display_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_display_name("Zoë Ñandú 李").unwrap(),
            "Zoë Ñandú 李"
        );
    }
}
