//! Credentials of service calls. Every internal gRPC call carries a token
//! that the calling service signed with its own key, and the callee answers
//! `UNAUTHENTICATED` to a call without a valid one: reaching a service's
//! port is not enough to call its internal methods.
//!
//! The token travels in the `gatehouse-service-token` metadata field
//! rather than `authorization`: HTTP/2 never adds an `authorization` value
//! to its header compression table, so every call would carry the whole
//! token, where a field of our own is sent in full once per connection.
//!
//! A token is a PASETO v4.public (Ed25519) whose claims name the caller
//! (`iss`), the callee (`aud`) and a lifetime of [`LIFETIME`]; its footer
//! holds the PASERK id of the caller's key, and it is signed with an
//! implicit assertion of its own, so no other PASETO (an access token of a
//! user) ever passes as one. A caller signs one token per callee and uses
//! it until it is [`REMINT`] old; a callee remembers the tokens it has
//! verified until they expire, so a call costs one signature check a
//! minute per caller rather than one per call.
//!
//! Keys: the all-in-one, whose calls never leave the process, makes a key
//! for each service in memory at start, with nothing to set up. Services in
//! separate processes read theirs from `rpc.credentials_dir`, which
//! `gatehouse credentials issue` fills: one `<service>.key` per service
//! (its secret key, owner-only) and `services.pub` (every service's public
//! key, the ones a callee trusts). A machine needs the keys of the services
//! it runs and `services.pub`.
//!
//! Rooms: `caller.rs` (signing the calls a service makes), `callee.rs`
//! (checking the calls made to it, and the middleware that refuses the
//! rest); this file holds the keys.

mod callee;
mod caller;

pub use callee::{Callee, CallingService, Refusal, require};
pub use caller::Caller;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use figment::providers::{Format as _, Toml};
use pasetors::footer::Footer;
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::version4::V4;
use serde::{Deserialize, Serialize};

use super::clock::Clock;
use super::config::ConfigError;

/// The metadata field a call's token travels in.
pub const HEADER: &str = "gatehouse-service-token";
/// The services a deployment's credentials are issued for.
pub const SERVICES: [&str; 5] = ["gateway", "auth", "identity", "authz", "audit"];
/// How long a call token is good for.
pub const LIFETIME: Duration = Duration::minutes(5);
/// How old a caller's token gets before it signs a new one.
pub const REMINT: Duration = Duration::minutes(1);
/// How far a callee's clock may run behind the caller's.
const LEEWAY: Duration = Duration::seconds(30);
/// Signed along with every call token, never part of it: a token signed
/// for anything else does not verify as one.
const IMPLICIT: &[u8] = b"gatehouse service call v1";
/// The file of public keys in a credentials directory.
pub const TRUST_FILE: &str = "services.pub";
/// Verified tokens a callee remembers.
const REMEMBERED: usize = 4096;

/// What a call token says.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    iat: String,
    exp: String,
}

/// The keys of one process: the secret keys of the services it runs and
/// the public keys of every service it accepts calls from.
pub struct Keyring {
    own: BTreeMap<String, AsymmetricSecretKey<V4>>,
    /// By PASERK id: the service and its key.
    trusted: HashMap<String, (Arc<str>, AsymmetricPublicKey<V4>)>,
    clock: Arc<dyn Clock>,
}

fn paserk(key: &impl FormatAsPaserk) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = key.fmt(&mut out);
    out
}

/// A key that cannot be made, a call token that cannot be signed, or
/// keys that cannot be issued.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot make or use a key: {0}")]
    Key(#[from] pasetors::errors::Error),
    #[error("cannot write a call token's claims: {0}")]
    Claims(#[from] serde_json::Error),
    #[error("a call token is not a header value: {0}")]
    Header(#[from] tonic::metadata::errors::InvalidMetadataValue),
    #[error("{0} is named twice")]
    NamedTwice(String),
    #[error("{} exists already; issue into an empty directory", .0.display())]
    Occupied(std::path::PathBuf),
    #[error(transparent)]
    File(#[from] super::keyfile::KeyFileError),
}

fn pair() -> Result<AsymmetricKeyPair<V4>, CredentialError> {
    Ok(AsymmetricKeyPair::<V4>::generate()?)
}

impl Keyring {
    /// A key for each of `services`, made now and kept in memory only: for
    /// a process whose calls never leave it.
    pub fn ephemeral(services: &[&str], clock: Arc<dyn Clock>) -> Result<Keyring, CredentialError> {
        let mut ring = Keyring {
            own: BTreeMap::new(),
            trusted: HashMap::new(),
            clock,
        };
        for service in services {
            let pair = pair()?;
            ring.trust(service, pair.public);
            ring.own.insert((*service).to_owned(), pair.secret);
        }
        Ok(ring)
    }

    /// The keys in `dir`: every `<service>.key` there, and `services.pub`.
    pub fn load(dir: &Path, clock: Arc<dyn Clock>) -> Result<Keyring, ConfigError> {
        let bad = |what: &dyn std::fmt::Display| {
            ConfigError(format!("rpc.credentials_dir ({}): {what}", dir.display()))
        };
        let trust_file = dir.join(TRUST_FILE);
        let published: BTreeMap<String, String> =
            figment::Figment::from(Toml::file_exact(&trust_file))
                .extract()
                .map_err(|e| bad(&format_args!("{TRUST_FILE}: {e}")))?;
        let mut ring = Keyring {
            own: BTreeMap::new(),
            trusted: HashMap::new(),
            clock,
        };
        for (service, text) in &published {
            let key = AsymmetricPublicKey::<V4>::try_from(text.as_str()).map_err(|_| {
                bad(&format_args!(
                    "{TRUST_FILE}: {service} is not a k4.public key"
                ))
            })?;
            ring.trust(service, key);
        }
        for service in SERVICES {
            let path = dir.join(format!("{service}.key"));
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // This machine does not run that service.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(bad(&format_args!("{service}.key: {e}"))),
            };
            let secret = AsymmetricSecretKey::<V4>::try_from(text.trim())
                .map_err(|_| bad(&format_args!("{service}.key is not a k4.secret key")))?;
            let public = AsymmetricPublicKey::<V4>::try_from(&secret)
                .map_err(|e| bad(&format_args!("{service}.key: {e}")))?;
            let listed = published.get(service).map(String::as_str);
            if listed != Some(paserk(&public).as_str()) {
                return Err(bad(&format_args!(
                    "{service}.key does not match the key {TRUST_FILE} lists for {service}; issue them together"
                )));
            }
            ring.own.insert(service.to_owned(), secret);
        }
        Ok(ring)
    }

    /// Makes a key for each of `services` in `dir`: `<service>.key`
    /// (owner-only) and `services.pub` with every public key. Refuses to
    /// overwrite keys already there.
    pub fn issue(dir: &Path, services: &[&str]) -> Result<(), CredentialError> {
        // Nothing is written unless all of it can be: keys that do not
        // match their services.pub are worse than none.
        let mut named = std::collections::BTreeSet::new();
        if let Some(twice) = services.iter().find(|s| !named.insert(**s)) {
            return Err(CredentialError::NamedTwice((*twice).to_owned()));
        }
        let files = services
            .iter()
            .map(|s| format!("{s}.key"))
            .chain([TRUST_FILE.to_owned()]);
        for file in files {
            let path = dir.join(file);
            if path.exists() {
                return Err(CredentialError::Occupied(path));
            }
        }
        super::keyfile::private_dir(dir)?;
        let mut published = String::from(
            "# Public keys of gatehouse's services: a callee accepts calls signed by these.\n",
        );
        let mut secrets = Vec::new();
        for service in services {
            let pair = pair()?;
            published.push_str(&format!("{service} = \"{}\"\n", paserk(&pair.public)));
            secrets.push((format!("{service}.key"), paserk(&pair.secret)));
        }
        for (name, text) in secrets
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .chain([(TRUST_FILE, published.as_str())])
        {
            let mode = if name == TRUST_FILE { 0o644 } else { 0o600 };
            super::keyfile::write_new(&dir.join(name), text.as_bytes(), mode)?;
        }
        Ok(())
    }

    fn trust(&mut self, service: &str, key: AsymmetricPublicKey<V4>) {
        self.trusted
            .insert(paserk(&Id::from(&key)), (Arc::from(service), key));
    }

    /// The services this process holds a key of.
    pub fn own(&self) -> impl Iterator<Item = &str> {
        self.own.keys().map(String::as_str)
    }

    /// A 32-byte key for `purpose`, the same in every process that holds
    /// `service`'s key (its replicas) and unknown to any other: for
    /// authenticating what those replicas share through stores they do not
    /// trust (Redis). `None` when this process holds no key of `service`.
    pub fn derived(&self, service: &str, purpose: &str) -> Option<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let secret = self.own.get(service)?;
        let mut hash = Sha256::new();
        hash.update(b"gatehouse derived key v1\0");
        hash.update(purpose.as_bytes());
        hash.update(b"\0");
        hash.update(secret.as_bytes());
        Some(hash.finalize().into())
    }

    /// What signs the calls `service` makes; `None` when this process holds
    /// no key of it.
    pub fn caller(&self, service: &str) -> Option<Arc<Caller>> {
        let secret = self.own.get(service)?;
        let public = AsymmetricPublicKey::<V4>::try_from(secret).ok()?;
        let mut footer = Footer::new();
        footer.key_id(&Id::from(&public));
        Some(Arc::new(Caller {
            service: service.to_owned(),
            secret: secret.clone(),
            footer: footer.to_string().ok()?,
            clock: self.clock.clone(),
            tokens: RwLock::default(),
        }))
    }

    /// What checks the calls made to `service`.
    pub fn callee(&self, service: &str) -> Arc<Callee> {
        Arc::new(Callee {
            service: service.to_owned(),
            trusted: self.trusted.clone(),
            clock: self.clock.clone(),
            remembered: RwLock::default(),
        })
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::clock::ManualClock;
    use pasetors::version4::PublicToken;

    fn ring(clock: &Arc<ManualClock>) -> Keyring {
        Keyring::ephemeral(&SERVICES, clock.clone()).unwrap()
    }

    #[test]
    fn a_callee_accepts_a_token_its_caller_signed_for_it_and_names_the_caller() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let ring = ring(&clock);
        let auth = ring.caller("auth").unwrap();
        let token = auth.token("identity").unwrap();
        let identity = ring.callee("identity");
        // The second time from what it remembers.
        for _ in 0..2 {
            let caller = identity.check(Some(token.as_bytes())).unwrap();
            assert_eq!(&*caller, "auth");
        }
        assert_eq!(
            ring.callee("authz")
                .check(Some(token.as_bytes()))
                .unwrap_err(),
            Refusal::WrongAudience
        );
        assert_eq!(
            ring.callee("identity").check(None).unwrap_err(),
            Refusal::Missing
        );
    }

    #[test]
    fn a_token_expires_and_the_caller_signs_a_new_one_before_it_does() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let ring = ring(&clock);
        let gateway = ring.caller("gateway").unwrap();
        let callee = ring.callee("auth");
        let first = gateway.token("auth").unwrap();
        assert_eq!(gateway.token("auth").unwrap(), first);
        clock.advance(REMINT);
        let second = gateway.token("auth").unwrap();
        assert_ne!(second, first);
        callee.check(Some(first.as_bytes())).unwrap();
        clock.advance(LIFETIME);
        assert_eq!(
            callee.check(Some(first.as_bytes())).unwrap_err(),
            Refusal::Expired
        );
        callee
            .check(Some(gateway.token("auth").unwrap().as_bytes()))
            .unwrap();
    }

    #[test]
    fn keys_of_another_deployment_and_other_tokens_are_refused() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (ours, theirs) = (ring(&clock), ring(&clock));
        let token = theirs.caller("auth").unwrap().token("identity").unwrap();
        assert_eq!(
            ours.callee("identity")
                .check(Some(token.as_bytes()))
                .unwrap_err(),
            Refusal::UnknownKey
        );
        // Signed by a trusted key, but without the call's implicit assertion.
        let secret = &ours.own["auth"];
        let public = AsymmetricPublicKey::<V4>::try_from(secret).unwrap();
        let mut footer = Footer::new();
        footer.key_id(&Id::from(&public));
        let claims = br#"{"iss":"auth","aud":"identity","iat":"2020-01-01T00:00:00Z","exp":"2999-01-01T00:00:00Z"}"#;
        let other = PublicToken::sign(
            secret,
            claims,
            Some(footer.to_string().unwrap().as_bytes()),
            None,
        )
        .unwrap();

        assert_eq!(
            ours.callee("identity")
                .check(Some(other.as_bytes()))
                .unwrap_err(),
            Refusal::BadSignature
        );
        for junk in ["v4.public.abc", "Bearer v4.public.abc", ""] {
            assert_eq!(
                ours.callee("identity")
                    .check(Some(junk.as_bytes()))
                    .unwrap_err(),
                Refusal::Malformed,
                "{junk}"
            );
        }
    }

    #[test]
    fn issued_keys_load_and_each_machine_signs_only_as_the_services_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        Keyring::issue(dir.path(), &SERVICES).unwrap();
        let err = Keyring::issue(dir.path(), &SERVICES)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists already"), "{err}");
        let elsewhere = dir.path().join("twice");
        let err = Keyring::issue(&elsewhere, &["auth", "identity", "auth"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth is named twice"), "{err}");
        assert!(!elsewhere.exists(), "nothing written");
        // A machine that runs identity only.
        let machine = tempfile::tempdir().unwrap();
        for file in ["identity.key", TRUST_FILE] {
            std::fs::copy(dir.path().join(file), machine.path().join(file)).unwrap();
        }
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Utc::now()));
        let identity = Keyring::load(machine.path(), clock.clone()).unwrap();
        assert_eq!(identity.own().collect::<Vec<_>>(), ["identity"]);
        assert!(identity.caller("auth").is_none());
        let all = Keyring::load(dir.path(), clock).unwrap();
        let token = all.caller("auth").unwrap().token("identity").unwrap();
        assert_eq!(
            &*identity
                .callee("identity")
                .check(Some(token.as_bytes()))
                .unwrap(),
            "auth"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("auth.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A key that does not match the published one.
        std::fs::copy(
            dir.path().join("auth.key"),
            machine.path().join("audit.key"),
        )
        .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Utc::now()));
        let err = Keyring::load(machine.path(), clock).err().unwrap();
        assert!(err.0.contains("audit.key does not match"), "{}", err.0);
    }
}
