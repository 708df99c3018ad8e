//! Finding an authorization server's endpoints from its issuer URL: RFC 8414, then OpenID
//! Connect Discovery 1.0.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use serde_json::Value;
use url::Url;

use super::endpoint::{DEFAULT_TIMEOUT, check_transport, read_capped, resolve_client};
use super::http::HttpClient;
use crate::error::{ConfigurationError, RefreshError, TransientError, TransientKind};

/// What an authorization server says about itself: its endpoints and what it supports.
///
/// ```no_run
/// use oauth_refresh::{ClientCredentials, RefreshLayer};
/// use oauth_refresh::oauth::ServerMetadata;
///
/// # async fn run() -> Result<(), oauth_refresh::RefreshError> {
/// let server = ServerMetadata::discover("https://login.example.com").await?;
/// let grant = ClientCredentials::new(&server.token_endpoint, "reporting", "s3cr3t");
/// let layer = RefreshLayer::new(grant);
/// # drop(layer);
/// # Ok(())
/// # }
/// # drop(run());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerMetadata {
    /// The issuer identifier, exactly as the request named it (checked).
    pub issuer: String,
    /// Where tokens are requested.
    pub token_endpoint: String,
    /// Where users sign in, for the authorization code grant.
    pub authorization_endpoint: Option<String>,
    /// Where tokens are revoked (RFC 7009), if the server has one: give it to
    /// [`RefreshTokenGrant::revocation_url`](crate::RefreshTokenGrant::revocation_url), or
    /// build the grant with [`RefreshTokenGrant::from_metadata`](crate::RefreshTokenGrant::from_metadata).
    pub revocation_endpoint: Option<String>,
    /// Where a device without a browser starts a sign-in (RFC 8628), if the server has one:
    /// see [`DeviceAuthorization::from_metadata`](super::DeviceAuthorization::from_metadata).
    pub device_authorization_endpoint: Option<String>,
    /// The PKCE methods the server supports; empty if it did not say.
    pub code_challenge_methods_supported: Vec<String>,
    /// The grant types the server supports; empty if it did not say.
    pub grant_types_supported: Vec<String>,
}

impl ServerMetadata {
    /// Fetches the metadata of the server whose issuer identifier is `issuer`, with the
    /// default HTTP client (feature `reqwest`), within 10 s.
    pub async fn discover(issuer: &str) -> Result<ServerMetadata, RefreshError> {
        discover(issuer, None).await
    }

    /// Fetches the metadata with the given HTTP client.
    pub async fn discover_with(
        issuer: &str,
        client: impl HttpClient,
    ) -> Result<ServerMetadata, RefreshError> {
        discover(issuer, Some(Arc::new(client))).await
    }
}

/// Discovery, bounded like a token request: a server that never answers is an error.
async fn discover(
    issuer: &str,
    client: Option<Arc<dyn HttpClient>>,
) -> Result<ServerMetadata, RefreshError> {
    match tokio::time::timeout(DEFAULT_TIMEOUT, fetch_metadata(issuer, client)).await {
        Ok(found) => found,
        Err(_elapsed) => Err(TransientError::new(TransientKind::Timeout).into()),
    }
}

async fn fetch_metadata(
    issuer: &str,
    client: Option<Arc<dyn HttpClient>>,
) -> Result<ServerMetadata, RefreshError> {
    let issuer_url = Url::parse(issuer).map_err(|e| {
        ConfigurationError::local("invalid_issuer")
            .with_description(format!("the issuer URL could not be parsed: {e}"))
    })?;
    // Metadata fetched in clear text could point the client's secrets anywhere.
    check_transport(&issuer_url, false)?;
    let client = resolve_client(client.as_ref())?;
    let mut last_status = None;
    for url in well_known_urls(&issuer_url) {
        let request = http::Request::builder()
            .method(Method::GET)
            .uri(url.as_str())
            .header(header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| {
                ConfigurationError::local("invalid_issuer").with_description(e.to_string())
            })?;
        let (head, body) = client.send(request).await?.into_parts();
        match head.status {
            StatusCode::OK => {
                let body = read_capped(&head.headers, body).await?;
                return metadata(issuer, &body);
            }
            StatusCode::NOT_FOUND => last_status = Some(head.status),
            status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                return Err(
                    TransientError::new(TransientKind::ServerError(status.as_u16()))
                        // The kind names the status; the reason says which endpoint it was.
                        .with_source("the answer came from the metadata endpoint, during discovery")
                        .into(),
                );
            }
            status => last_status = Some(status),
        }
    }
    Err(ConfigurationError::local("metadata_not_found")
        .with_description(format!(
            "no authorization server metadata under {issuer} (last answer {})",
            last_status.map_or(0, |s| s.as_u16())
        ))
        .into())
}

/// RFC 8414 §3.1 inserts the well-known path between the host and the issuer's path;
/// OpenID Connect Discovery appends it to the issuer.
fn well_known_urls(issuer: &Url) -> [Url; 2] {
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut openid = issuer.clone();
    openid.set_path(&format!("{path}/.well-known/openid-configuration"));
    [rfc8414, openid]
}

fn metadata(issuer: &str, body: &[u8]) -> Result<ServerMetadata, RefreshError> {
    let invalid = |what: &str| -> RefreshError {
        ConfigurationError::local("invalid_metadata")
            .with_description(format!("the server's metadata {what}"))
            .into()
    };
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("is not a JSON object"));
    };
    let string = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_owned);
    let list = |name: &str| -> Vec<String> {
        fields
            .get(name)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    // RFC 8414 §3.3: metadata naming another issuer must not be used (mix-up attacks).
    if string("issuer").as_deref() != Some(issuer) {
        return Err(invalid("names another issuer"));
    }
    let Some(token_endpoint) = string("token_endpoint") else {
        return Err(invalid("names no token_endpoint"));
    };
    Ok(ServerMetadata {
        issuer: issuer.to_owned(),
        token_endpoint,
        authorization_endpoint: string("authorization_endpoint"),
        revocation_endpoint: string("revocation_endpoint"),
        device_authorization_endpoint: string("device_authorization_endpoint"),
        code_challenge_methods_supported: list("code_challenge_methods_supported"),
        grant_types_supported: list("grant_types_supported"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_follow_both_specs() {
        let [rfc8414, openid] =
            well_known_urls(&Url::parse("https://login.example.com/tenant/1").unwrap());
        assert_eq!(
            rfc8414.as_str(),
            "https://login.example.com/.well-known/oauth-authorization-server/tenant/1"
        );
        assert_eq!(
            openid.as_str(),
            "https://login.example.com/tenant/1/.well-known/openid-configuration"
        );
        let [rfc8414, openid] = well_known_urls(&Url::parse("https://login.example.com").unwrap());
        assert_eq!(
            rfc8414.as_str(),
            "https://login.example.com/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            openid.as_str(),
            "https://login.example.com/.well-known/openid-configuration"
        );
    }

    #[tokio::test]
    async fn a_failing_metadata_endpoint_is_named_once() {
        use crate::oauth::ResponseBody;
        use crate::source::BoxFuture;
        use http_body_util::{BodyExt, Empty};

        struct Unavailable;
        impl HttpClient for Unavailable {
            fn send(
                &self,
                _: http::Request<Bytes>,
            ) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
                let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
                let mut response = http::Response::new(body);
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Box::pin(async move { Ok(response) })
            }
        }

        let err = ServerMetadata::discover_with("https://login.example.com", Unavailable)
            .await
            .unwrap_err();
        let RefreshError::Transient(transient) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(transient.kind(), TransientKind::ServerError(503));
        let reason = std::error::Error::source(transient).unwrap().to_string();
        assert_eq!(
            reason,
            "the answer came from the metadata endpoint, during discovery"
        );
        assert!(!reason.contains("503"), "{err}: {reason}");
    }

    #[test]
    fn metadata_for_another_issuer_is_refused() {
        let body = br#"{"issuer":"https://evil.example.com","token_endpoint":"https://evil.example.com/token"}"#;
        assert!(metadata("https://login.example.com", body).is_err());
        let body = br#"{"issuer":"https://login.example.com","token_endpoint":"https://login.example.com/token","code_challenge_methods_supported":["S256"]}"#;
        let found = metadata("https://login.example.com", body).unwrap();
        assert_eq!(found.token_endpoint, "https://login.example.com/token");
        assert_eq!(found.code_challenge_methods_supported, ["S256"]);
        assert_eq!(found.revocation_endpoint, None);
        assert_eq!(found.device_authorization_endpoint, None);
    }

    #[test]
    fn the_revocation_and_device_endpoints_are_found() {
        let body = br#"{"issuer":"https://login.example.com","token_endpoint":"https://login.example.com/token",
            "revocation_endpoint":"https://login.example.com/revoke",
            "device_authorization_endpoint":"https://login.example.com/device/auth"}"#;
        let found = metadata("https://login.example.com", body).unwrap();
        assert_eq!(
            found.revocation_endpoint.as_deref(),
            Some("https://login.example.com/revoke")
        );
        assert_eq!(
            found.device_authorization_endpoint.as_deref(),
            Some("https://login.example.com/device/auth")
        );
    }
}
