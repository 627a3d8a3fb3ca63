-- The keys ID tokens are signed with, one lifecycle per JOSE algorithm
-- (RS256, ES256, EdDSA): the public half as a JWK, the secret half PKCS#8
-- sealed under the key-encryption key. Apart from the access tokens'
-- signing_keys, so that instances of the version before read only theirs.
CREATE TABLE id_token_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    secret_key_enc BYTEA NOT NULL,
    created_at TIMESTAMP NOT NULL,
    signs_from TIMESTAMP NOT NULL,
    published_until TIMESTAMP
);

CREATE INDEX id_token_keys_by_alg ON id_token_keys (alg, signs_from);
