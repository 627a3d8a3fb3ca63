//! Client authentication at the token, introspection and revocation
//! endpoints: `client_secret_basic`, `client_secret_post`, or `none` for a
//! public client.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;

use super::clients::Client;
use super::error::OAuthError;
use super::service::Provider;

impl Provider {
    /// Finds and authenticates the client of a token, introspection or
    /// revocation request.
    pub async fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form_id: Option<&str>,
        form_secret: Option<&str>,
    ) -> Result<Client, OAuthError> {
        let basic = basic_credentials(headers)?;
        let used_basic = basic.is_some();
        let (id, secret) = match (basic, form_secret) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::InvalidRequest(
                    "the client authenticated in more than one way".into(),
                ));
            }
            (Some((id, secret)), None) => {
                if form_id.is_some_and(|f| f != id) {
                    return Err(OAuthError::InvalidRequest(
                        "client_id differs from the Authorization header's".into(),
                    ));
                }
                (id, Some(secret))
            }
            (None, secret) => match form_id {
                Some(id) => (id.to_owned(), secret.map(str::to_owned)),
                None => return Err(OAuthError::InvalidClient { basic: false }),
            },
        };
        let refused = OAuthError::InvalidClient { basic: used_basic };
        if id.is_empty() || id.len() > 128 {
            return Err(refused);
        }
        let Some(client) = self.clients.find(&id).await? else {
            return Err(refused);
        };
        let authenticated = match (&secret, client.is_public()) {
            (None, true) => true,
            (Some(secret), false) => client.secret_matches(secret),
            _ => false,
        };
        if !authenticated {
            tracing::info!(client_id = %client.id, "client authentication failed");
            return Err(refused);
        }
        Ok(client)
    }
}

/// The id and secret of an `Authorization: Basic` header, each
/// form-decoded after the base64 (RFC 6749 §2.3.1); `None` without one.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let refused = || OAuthError::InvalidClient { basic: true };
    let value = value.to_str().map_err(|_| refused())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(refused());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidRequest(
            "clients authenticate with Authorization: Basic or in the form".into(),
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| refused())?;
    let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(refused)?;
    let form_decode = |part: &str| -> Result<String, OAuthError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&format!("v={part}")).map_err(|_| refused())?;
        Ok(pairs.into_iter().next().map(|(_, v)| v).unwrap_or_default())
    };
    Ok(Some((form_decode(id)?, form_decode(secret)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded_after_the_base64() {
        let mut headers = HeaderMap::new();
        assert!(basic_credentials(&headers).unwrap().is_none());
        let encoded = STANDARD.encode("my%20app:p%3Ass+word");
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers).unwrap(),
            Some(("my app".into(), "p:ss word".into()))
        );
        headers.insert(http::header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(matches!(
            basic_credentials(&headers),
            Err(OAuthError::InvalidClient { basic: true })
        ));
    }
}
