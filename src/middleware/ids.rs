//! The ids of users, sessions and clients, each a type of its own, so that
//! one is never passed where another is wanted. All are UUIDs on the wire
//! and in storage; the conversions are at those edges.

use std::fmt;

use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// A new id, ordered by the time it was made (UUID v7).
            pub fn now_v7() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id in `text`, a UUID in any of its usual forms.
            pub fn parse(text: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(text).map(Self)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

uuid_id!(
    /// A user's id, as identity gives it and tokens carry it (`sub`).
    UserId
);
uuid_id!(
    /// A session's id, as auth gives it and tokens carry it (`sid`).
    SessionId
);
uuid_id!(
    /// A registered OpenID Connect client's id, as auth gives it (a random
    /// UUID) and its own tokens carry it (`sub`, for the client credentials
    /// grant).
    ClientId
);

/// Whom authz is asked about: a user, or a client acting for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    User(UserId),
    Client(ClientId),
}

impl Subject {
    pub const fn as_uuid(&self) -> Uuid {
        match self {
            Subject::User(id) => id.as_uuid(),
            Subject::Client(id) => id.as_uuid(),
        }
    }

    /// `user` or `client`, as authz's subjects are spelt (`user:<id>`).
    pub const fn kind(&self) -> &'static str {
        match self {
            Subject::User(_) => "user",
            Subject::Client(_) => "client",
        }
    }
}

impl From<UserId> for Subject {
    fn from(id: UserId) -> Self {
        Subject::User(id)
    }
}

impl From<ClientId> for Subject {
    fn from(id: ClientId) -> Self {
        Subject::Client(id)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.as_uuid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_back_as_written_and_travels_as_its_uuid() {
        let user = UserId::now_v7();
        assert_eq!(UserId::parse(&user.to_string()).unwrap(), user);
        assert_eq!(
            serde_json::to_string(&user).unwrap(),
            format!("\"{}\"", user.as_uuid())
        );
        assert!(SessionId::parse("not-a-uuid").is_err());
    }
}
