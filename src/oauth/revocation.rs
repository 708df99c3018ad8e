//! Token revocation (RFC 7009): the request a grant sends when the application signs a user
//! out.

use url::Url;

use super::endpoint::{Endpoint, check_transport};
use super::response;
use crate::error::{ConfigurationError, RefreshError, TransientError, TransientKind};
use crate::revocation::{RevocationError, RevocationRequest};

/// Where a grant revokes its tokens: the server's `revocation_endpoint`.
pub(crate) type RevocationUrl = Option<Result<Url, String>>;

/// Parses a configured revocation URL; a bad one is reported when a sign-out uses it.
pub(crate) fn parse(url: &str) -> RevocationUrl {
    Some(Url::parse(url).map_err(|error| error.to_string()))
}

/// Revokes the tokens of `request` at `url`, the refresh token first (servers revoke the
/// access tokens of its grant with it), each with its `token_type_hint`, with the client
/// authentication of `endpoint`. Both are tried; the first failure is returned.
pub(crate) async fn revoke(
    endpoint: &Endpoint,
    url: &RevocationUrl,
    request: RevocationRequest,
) -> Result<(), RevocationError> {
    let url = checked(endpoint, url)?;
    let tokens = [
        request
            .refresh_token
            .as_ref()
            .map(|t| (t.secret(), "refresh_token")),
        request
            .access_token
            .as_ref()
            .map(|t| (t.secret(), "access_token")),
    ];
    let mut first_failure = None;
    for (token, hint) in tokens.into_iter().flatten() {
        let params = [("token", token), ("token_type_hint", hint)];
        if let Err(error) = revoke_one(endpoint, url, &params).await {
            tracing::warn!(%error, token_type_hint = hint, "revocation failed");
            first_failure.get_or_insert(error);
        }
    }
    match first_failure {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

fn checked<'a>(endpoint: &Endpoint, url: &'a RevocationUrl) -> Result<&'a Url, RefreshError> {
    let url = match url {
        Some(Ok(url)) => url,
        Some(Err(reason)) => {
            return Err(ConfigurationError::local("invalid_revocation_url")
                .with_description(format!("the revocation URL could not be parsed: {reason}"))
                .into());
        }
        None => {
            return Err(ConfigurationError::local("no_revocation_endpoint")
                .with_description(
                    "no revocation URL is configured: the tokens were not revoked at the server",
                )
                .into());
        }
    };
    check_transport(url, endpoint.allow_insecure_http)?;
    Ok(url)
}

/// RFC 7009 §2.2: 200 means revoked, or a token the server did not know (which is as good);
/// the body is not read. Anything else is classified as a token endpoint's error would be:
/// `unsupported_token_type` and `invalid_client` are configuration errors, 503 with
/// `Retry-After` a transient one.
async fn revoke_one(
    endpoint: &Endpoint,
    url: &Url,
    params: &[(&str, &str)],
) -> Result<(), RefreshError> {
    // Revoking twice is harmless: a request that may have been sent may be sent again.
    let (head, body) = endpoint.post_form(url, params, true).await?;
    if head.status.is_success() {
        return Ok(());
    }
    match response::token_set(head.status, &head.headers, &body, &endpoint.rules(true)) {
        Err(error) => Err(error),
        // Not a success status, so never a token set; said plainly all the same.
        Ok(_) => Err(TransientError::new(TransientKind::InvalidResponse)
            .with_source(format!("the revocation endpoint answered {}", head.status))
            .into()),
    }
}
