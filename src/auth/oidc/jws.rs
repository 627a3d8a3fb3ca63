//! JSON Web Signatures for ID tokens: compact JWTs signed with ring in
//! RS256, ES256 or EdDSA (Ed25519), the keys' public halves as JWKs with
//! their RFC 7638 thumbprints as ids, and `at_hash`.
//!
//! ring does every signature. It cannot make RSA keys, so those come from
//! the `rsa` crate, used for that alone: its own private-key operations
//! carry RUSTSEC-2023-0071 (a timing side channel), and none runs here.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};

/// A signing algorithm of ID tokens, by its JOSE name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 and a 2048-bit key: the default, as
    /// every relying party takes it and discovery must offer it.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl Alg {
    pub const ALL: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A key that cannot be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum JwsError {
    #[error("cannot make a {0} key")]
    Generate(&'static str),
    #[error("the stored {alg} key cannot be read: {reason}")]
    Rejected { alg: &'static str, reason: String },
    #[error("cannot sign")]
    Sign,
    #[error("cannot write the token: {0}")]
    Json(#[from] serde_json::Error),
}

/// A new private key for `alg`, as PKCS#8 DER: what is sealed and stored.
/// An RSA key takes a moment to make: call this off the async threads.
pub fn generate(alg: Alg) -> Result<Vec<u8>, JwsError> {
    let rng = SystemRandom::new();
    let failed = || JwsError::Generate(alg.name());
    match alg {
        Alg::Rs256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key =
                rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|_| failed())?;
            let der = key.to_pkcs8_der().map_err(|_| failed())?;
            Ok(der.as_bytes().to_vec())
        }
        Alg::Es256 => signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map(|der| der.as_ref().to_vec())
        .map_err(|_| failed()),
        Alg::EdDsa => signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|der| der.as_ref().to_vec())
            .map_err(|_| failed()),
    }
}

enum Pair {
    Rsa(signature::RsaKeyPair),
    Ec(signature::EcdsaKeyPair),
    Ed(signature::Ed25519KeyPair),
}

/// A private key ready to sign, with its id.
pub struct SigningKey {
    alg: Alg,
    kid: String,
    pair: Pair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key in `der` (PKCS#8, as [`generate`] makes it) for `alg`.
    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<Self, JwsError> {
        let rng = SystemRandom::new();
        let rejected = |e: ring::error::KeyRejected| JwsError::Rejected {
            alg: alg.name(),
            reason: e.to_string(),
        };
        let pair = match alg {
            Alg::Rs256 => Pair::Rsa(signature::RsaKeyPair::from_pkcs8(der).map_err(rejected)?),
            Alg::Es256 => Pair::Ec(
                signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(rejected)?,
            ),
            Alg::EdDsa => Pair::Ed(
                signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?,
            ),
        };
        let mut key = SigningKey {
            alg,
            kid: String::new(),
            pair,
            rng,
        };
        key.kid = thumbprint(&key.members());
        Ok(key)
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The key's id: the RFC 7638 thumbprint of its public half.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The members that make the public key, by JWK name, in the
    /// lexicographic order RFC 7638 hashes them in.
    fn members(&self) -> Vec<(&'static str, String)> {
        match &self.pair {
            Pair::Rsa(pair) => {
                let parts: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                vec![
                    ("e", B64.encode(parts.e)),
                    ("kty", "RSA".into()),
                    ("n", B64.encode(parts.n)),
                ]
            }
            Pair::Ec(pair) => {
                // The uncompressed point: 0x04, then x and y, 32 bytes each.
                let point = pair.public_key().as_ref();
                vec![
                    ("crv", "P-256".into()),
                    ("kty", "EC".into()),
                    ("x", B64.encode(&point[1..33])),
                    ("y", B64.encode(&point[33..65])),
                ]
            }
            Pair::Ed(pair) => vec![
                ("crv", "Ed25519".into()),
                ("kty", "OKP".into()),
                ("x", B64.encode(pair.public_key().as_ref())),
            ],
        }
    }

    /// The public half as a JWK, for the JWKS.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = serde_json::Map::new();
        for (name, value) in self.members() {
            jwk.insert(name.into(), Value::String(value));
        }
        jwk.insert("use".into(), json!("sig"));
        jwk.insert("alg".into(), json!(self.alg.name()));
        jwk.insert("kid".into(), json!(self.kid));
        Value::Object(jwk)
    }

    /// `claims` as a compact JWT signed with this key, its header naming
    /// the algorithm and the key.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, JwsError> {
        let header = json!({"alg": self.alg.name(), "kid": self.kid, "typ": "JWT"});
        let mut token = B64.encode(serde_json::to_vec(&header)?);
        token.push('.');
        token.push_str(&B64.encode(serde_json::to_vec(claims)?));
        let input = token.as_bytes();
        let signature = match &self.pair {
            Pair::Rsa(pair) => {
                let mut out = vec![0u8; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &self.rng, input, &mut out)
                    .map_err(|_| JwsError::Sign)?;
                out
            }
            Pair::Ec(pair) => pair
                .sign(&self.rng, input)
                .map_err(|_| JwsError::Sign)?
                .as_ref()
                .to_vec(),
            Pair::Ed(pair) => pair.sign(input).as_ref().to_vec(),
        };
        token.push('.');
        token.push_str(&B64.encode(signature));
        Ok(token)
    }
}

/// The RFC 7638 thumbprint of a key given by its required members, in
/// lexicographic order: SHA-256 over their JSON with no spaces.
fn thumbprint(members: &[(&'static str, String)]) -> String {
    let mut canonical = serde_json::Map::new();
    for (name, value) in members {
        canonical.insert((*name).into(), Value::String(value.clone()));
    }
    // serde_json's map keeps its keys sorted, as RFC 7638 orders them.
    let text = Value::Object(canonical).to_string();
    B64.encode(Sha256::digest(text.as_bytes()))
}

/// The header and claims of the compact JWT `token` if `jwk` (a public
/// key as [`SigningKey::public_jwk`] publishes it) signed it; times are
/// not checked.
pub fn verify(jwk: &Value, token: &str) -> Option<(Value, Value)> {
    let mut parts = token.split('.');
    let (header, claims, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decode =
        |part: &str| -> Option<Value> { serde_json::from_slice(&B64.decode(part).ok()?).ok() };
    let (header_json, claims_json) = (decode(header)?, decode(claims)?);
    let alg = Alg::parse(header_json["alg"].as_str()?)?;
    if jwk["alg"].as_str() != Some(alg.name()) {
        return None;
    }
    let member = |name: &str| B64.decode(jwk[name].as_str()?).ok();
    let input = &token[..header.len() + 1 + claims.len()];
    let sig = B64.decode(sig).ok()?;
    let verified = match alg {
        Alg::Rs256 => signature::RsaPublicKeyComponents {
            n: member("n")?,
            e: member("e")?,
        }
        .verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &sig,
        ),
        Alg::Es256 => {
            let mut point = vec![4u8];
            point.extend(member("x")?);
            point.extend(member("y")?);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(input.as_bytes(), &sig)
        }
        Alg::EdDsa => signature::UnparsedPublicKey::new(&signature::ED25519, member("x")?)
            .verify(input.as_bytes(), &sig),
    };
    verified.ok().map(|()| (header_json, claims_json))
}

/// The `at_hash` (or `c_hash`) of `token` for an ID token signed with
/// `alg`: the left half of the token's hash under the algorithm's hash
/// function (SHA-256; SHA-512 for Ed25519), base64url.
pub fn half_hash(alg: Alg, token: &str) -> String {
    match alg {
        Alg::Rs256 | Alg::Es256 => B64.encode(&Sha256::digest(token.as_bytes())[..16]),
        Alg::EdDsa => B64.encode(&Sha512::digest(token.as_bytes())[..32]),
    }
}

#[cfg(test)]
mod tests {
    use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
    use openidconnect::{AccessToken, AccessTokenHash, JsonWebKey as _};

    use super::*;

    fn key(alg: Alg) -> SigningKey {
        SigningKey::from_pkcs8(alg, &generate(alg).unwrap()).unwrap()
    }

    /// The token's parts, decoded: header, claims, and the signing input
    /// with its signature.
    fn parts(token: &str) -> (Value, Value, String, Vec<u8>) {
        let mut it = token.split('.');
        let (h, c, s) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        assert!(it.next().is_none(), "three parts");
        let json = |p: &str| serde_json::from_slice(&B64.decode(p).unwrap()).unwrap();
        (json(h), json(c), format!("{h}.{c}"), B64.decode(s).unwrap())
    }

    #[test]
    fn a_relying_party_library_verifies_each_algorithm_with_the_published_key() {
        for alg in Alg::ALL {
            let key = key(alg);
            let claims = json!({"iss": "http://127.0.0.1:8080", "sub": "ann", "aud": "grafana"});
            let token = key.sign(&claims).unwrap();
            let (header, read, input, signature) = parts(&token);
            assert_eq!(header["alg"], alg.name());
            assert_eq!(header["kid"], key.kid());
            assert_eq!(read, claims);

            // openidconnect reads the JWK as published and checks the
            // signature itself.
            let jwk: CoreJsonWebKey = serde_json::from_value(key.public_jwk()).unwrap();
            let named: CoreJwsSigningAlgorithm = serde_json::from_value(json!(alg.name())).unwrap();
            jwk.verify_signature(&named, input.as_bytes(), &signature)
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            let mut altered = input.clone().into_bytes();
            altered[0] ^= 1;
            assert!(jwk.verify_signature(&named, &altered, &signature).is_err());

            // Another key of the same algorithm does not verify it.
            let other: CoreJsonWebKey =
                serde_json::from_value(self::key(alg).public_jwk()).unwrap();
            assert!(
                other
                    .verify_signature(&named, input.as_bytes(), &signature)
                    .is_err()
            );

            // The provider reads its own tokens back (an id_token_hint),
            // and no other key's, nor an altered one.
            let (_, back) = verify(&key.public_jwk(), &token).unwrap();
            assert_eq!(back, claims);
            assert!(verify(&self::key(alg).public_jwk(), &token).is_none());
            let mut tampered = token.clone();
            tampered.insert(token.find('.').unwrap() + 2, 'x');
            assert!(verify(&key.public_jwk(), &tampered).is_none());

            // at_hash as the library computes it.
            let access = AccessToken::new("v4.public.an-access-token".into());
            let theirs = AccessTokenHash::from_token(&access, &named, &jwk).unwrap();
            assert_eq!(
                theirs.to_string(),
                half_hash(alg, access.secret()),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn a_key_reads_back_with_the_same_id_and_the_id_is_its_thumbprint() {
        let der = generate(Alg::Es256).unwrap();
        let (a, b) = (
            SigningKey::from_pkcs8(Alg::Es256, &der).unwrap(),
            SigningKey::from_pkcs8(Alg::Es256, &der).unwrap(),
        );
        assert_eq!(a.kid(), b.kid());
        assert_ne!(a.kid(), key(Alg::Es256).kid());
        // RFC 7638 section 3.1's example key and thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let tp = thumbprint(&[("e", "AQAB".into()), ("kty", "RSA".into()), ("n", n.into())]);
        assert_eq!(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        // A key of the wrong algorithm is refused, not misread.
        assert!(SigningKey::from_pkcs8(Alg::Rs256, &der).is_err());
    }
}
