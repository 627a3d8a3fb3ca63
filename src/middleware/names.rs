//! The names authorization is written in: permissions (`resource_type:action`,
//! `resource_type:*` or `*`) and resources (`resource_type:id`), each
//! parsed strictly, and what covers what. Authz decides with them; the
//! gateway and the services that ask it check the names they are
//! configured with before they ask.

use std::fmt;

/// The longest permission or resource text.
pub const MAX_NAME: usize = 128;

/// Why a permission or a resource is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} is not a permission: `resource_type:action`, `resource_type:*` or `*`")]
    BadPermission(String),
    #[error("{0:?} is not a resource: `resource_type:id`")]
    BadResource(String),
}

/// A resource type: dot-separated segments (`billing.invoices`), each a
/// lower-case letter followed by lower-case letters, digits, `_` or `-`.
fn valid_type(text: &str) -> bool {
    text.split('.').all(|segment| {
        let mut bytes = segment.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_lowercase())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    })
}

/// Whether `text` is a resource type, as a scope names one.
pub fn is_resource_type(text: &str) -> bool {
    text.len() <= MAX_NAME && valid_type(text)
}

/// An action: a lower-case letter followed by lower-case letters, digits,
/// `_` or `-`.
fn valid_action(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A permission as granted by a role: one action on one type, every action
/// on one type, or everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// `*`
    All,
    /// `resource_type:*`
    AnyAction(String),
    /// `resource_type:action`
    Action(String, String),
}

impl Permission {
    /// Parses `text`; anything but the three shapes is refused.
    pub fn parse(text: &str) -> Result<Permission, NameError> {
        let bad = || NameError::BadPermission(text.to_owned());
        if text == "*" {
            return Ok(Permission::All);
        }
        if text.len() > MAX_NAME {
            return Err(bad());
        }
        let (kind, action) = text.split_once(':').ok_or_else(bad)?;
        if !valid_type(kind) {
            return Err(bad());
        }
        match action {
            "*" => Ok(Permission::AnyAction(kind.to_owned())),
            action if valid_action(action) => {
                Ok(Permission::Action(kind.to_owned(), action.to_owned()))
            }
            _ => Err(bad()),
        }
    }

    /// Parses a permission a check asks about: one action on one type.
    pub fn parse_asked(text: &str) -> Result<Permission, NameError> {
        match Permission::parse(text)? {
            asked @ Permission::Action(..) => Ok(asked),
            _ => Err(NameError::BadPermission(text.to_owned())),
        }
    }

    /// Whether holding `self` grants `asked`.
    pub fn covers(&self, asked: &Permission) -> bool {
        match (self, asked) {
            (Permission::All, _) => true,
            (Permission::AnyAction(kind), Permission::AnyAction(asked))
            | (Permission::AnyAction(kind), Permission::Action(asked, _)) => kind == asked,
            (Permission::Action(kind, action), Permission::Action(asked, asked_action)) => {
                kind == asked && action == asked_action
            }
            _ => false,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permission::All => f.write_str("*"),
            Permission::AnyAction(kind) => write!(f, "{kind}:*"),
            Permission::Action(kind, action) => write!(f, "{kind}:{action}"),
        }
    }
}

/// One resource: `type:id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    pub kind: String,
    pub id: String,
}

impl Resource {
    /// Parses `type:id`; the id is visible ASCII without spaces.
    pub fn parse(text: &str) -> Result<Resource, NameError> {
        let bad = || NameError::BadResource(text.to_owned());
        if text.len() > MAX_NAME {
            return Err(bad());
        }
        let (kind, id) = text.split_once(':').ok_or_else(bad)?;
        if !valid_type(kind) || id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad());
        }
        Ok(Resource {
            kind: kind.to_owned(),
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Permission {
        Permission::parse(text).unwrap()
    }

    fn r(text: &str) -> Resource {
        Resource::parse(text).unwrap()
    }

    #[test]
    fn permissions_have_three_shapes_and_wildcards_cover_what_they_name() {
        assert_eq!(p("*"), Permission::All);
        assert_eq!(p("users:*"), Permission::AnyAction("users".into()));
        assert_eq!(
            p("billing.invoices:write"),
            Permission::Action("billing.invoices".into(), "write".into())
        );
        for bad in [
            "",
            "users",
            "users:",
            ":read",
            "Users:read",
            "users:Read",
            "users:read:x",
            "users.:read",
            "1users:read",
            "users:*read",
            "users :read",
            "*:read",
            "**",
        ] {
            assert!(Permission::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Permission::parse(&format!("a:{}", "b".repeat(MAX_NAME))).is_err());
        assert!(Permission::parse_asked("users:*").is_err());
        assert!(Permission::parse_asked("*").is_err());

        assert!(p("*").covers(&p("users:read")));
        assert!(p("users:*").covers(&p("users:read")));
        assert!(!p("users:*").covers(&p("users.admins:read")));
        assert!(p("users:read").covers(&p("users:read")));
        assert!(!p("users:read").covers(&p("users:write")));
        assert!(!p("users:read").covers(&p("users:*")));
        for text in ["*", "users:*", "billing.invoices:write"] {
            assert_eq!(p(text).to_string(), text);
        }
    }

    #[test]
    fn resources_are_a_type_and_an_id() {
        assert_eq!(r("projects:42").to_string(), "projects:42");
        for bad in [
            "projects",
            "projects:",
            ":42",
            "Projects:42",
            "projects:4 2",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad:?}");
        }
    }
}
