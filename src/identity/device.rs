//! Device tokens: what a client that signed in to an account keeps, so that
//! its later sign-ins are throttled on their own (see `throttle.rs`) and
//! no one else's failed guesses hold it back.
//!
//! A token names a random device id and the account's address, with when it
//! expires, under an HMAC-SHA256 of a key only identity holds: it can be
//! made only by a sign-in with the right password, and checked without
//! storing anything. It grants nothing but that allowance: no access, no
//! session. Form: `gd1.<device id>.<expiry, unix seconds>.<MAC>`, the MAC
//! over the address too, all hex.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

const PREFIX: &str = "gd1";

/// Makes and checks device tokens with one key.
#[derive(Clone)]
pub(super) struct Devices {
    /// The MAC, keyed.
    keyed: Hmac<Sha256>,
    lifetime: chrono::Duration,
}

impl Devices {
    pub(super) fn new(key: [u8; 32], lifetime_secs: u64) -> Self {
        Self {
            keyed: crate::kernel::seal::hmac_sha256(&key),
            lifetime: chrono::Duration::seconds(
                i64::try_from(lifetime_secs).unwrap_or(i64::MAX / 1000),
            ),
        }
    }

    /// A token for a new device of the account at `email` (its lookup
    /// form), or for `device` again, good from `now` for the lifetime.
    pub(super) fn issue(&self, email: &str, device: Option<&str>, now: DateTime<Utc>) -> String {
        let device = device.map(str::to_owned).unwrap_or_else(|| {
            let mut id = [0u8; 16];
            rand::rng().fill_bytes(&mut id);
            hex::encode(id)
        });
        let expires = (now + self.lifetime).timestamp();
        let mac = self.mac(email, &device, expires);
        format!("{PREFIX}.{device}.{expires}.{mac}")
    }

    /// The device id of `token` when it is a live token of the account at
    /// `email`; `None` for anything else (another account's, expired,
    /// forged, malformed).
    pub(super) fn check<'t>(
        &self,
        token: &'t str,
        email: &str,
        now: DateTime<Utc>,
    ) -> Option<&'t str> {
        let mut parts = token.split('.');
        let (prefix, device, expires, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if prefix != PREFIX || parts.next().is_some() || device.len() != 32 {
            return None;
        }
        let expires: i64 = expires.parse().ok()?;
        if expires <= now.timestamp() {
            return None;
        }
        self.hmac(email, device, expires)
            .verify_slice(&hex::decode(mac).ok()?)
            .ok()?;
        Some(device)
    }

    fn hmac(&self, email: &str, device: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        for part in [email.as_bytes(), b"\0", device.as_bytes(), b"\0"] {
            mac.update(part);
        }
        mac.update(&expires.to_be_bytes());
        mac
    }

    fn mac(&self, email: &str, device: &str, expires: i64) -> String {
        hex::encode(self.hmac(email, device, expires).finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_for_its_account_until_it_expires_and_nothing_else() {
        let devices = Devices::new([7; 32], 3600);
        let now = Utc::now();
        let token = devices.issue("ann@example.org", None, now);
        let id = devices.check(&token, "ann@example.org", now).unwrap();
        assert_eq!(id.len(), 32);
        // Issued again for the same device, it names the same id.
        let again = devices.issue("ann@example.org", Some(id), now);
        assert_eq!(devices.check(&again, "ann@example.org", now), Some(id));
        assert_eq!(devices.check(&token, "bob@example.org", now), None);
        assert_eq!(
            devices.check(
                &token,
                "ann@example.org",
                now + chrono::Duration::seconds(3600)
            ),
            None
        );
        let other_key = Devices::new([8; 32], 3600);
        assert_eq!(other_key.check(&token, "ann@example.org", now), None);
        let mut forged = token.clone();
        forged.replace_range(4..5, if &token[4..5] == "0" { "1" } else { "0" });
        assert_eq!(devices.check(&forged, "ann@example.org", now), None);
        for bad in ["", "gd1", "gd1.x.1.y", &format!("{token}.x"), "gd2.a.b.c"] {
            assert_eq!(devices.check(bad, "ann@example.org", now), None, "{bad}");
        }
    }
}
