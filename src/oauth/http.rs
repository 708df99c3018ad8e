//! The HTTP client that talks to the token endpoint: reqwest by default, or the user's own.
//!
//! Token requests never go through a [`RefreshLayer`](crate::RefreshLayer): a layer that
//! waited on its own refresh would deadlock.

use std::fmt;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;
use crate::error::TransientError;
use crate::source::BoxFuture;

/// The body of a token endpoint's answer, as an [`HttpClient`] hands it over. The grants read
/// it with a size cap, so a client need not buffer it.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Sends one HTTP request to an authorization server and returns the answer's head and body.
///
/// The grants use reqwest by default (feature `reqwest`); implement this to use another
/// client, such as one with a corporate proxy or a custom TLS root.
///
/// A failure to get an answer is a [`TransientError`] of kind
/// [`Network`](crate::TransientKind::Network) or [`Timeout`](crate::TransientKind::Timeout). Its
/// [`is_resend_safe`](TransientError::is_resend_safe) says whether the request certainly never
/// reached the server (a refused connection, a DNS failure): only then may a `refresh_token`
/// grant be sent again, since a server may already have rotated the token it carried.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use oauth_refresh::oauth::{HttpClient, ResponseBody};
/// use oauth_refresh::{BoxFuture, ClientCredentials, RefreshLayer, TransientError};
///
/// /// Answers every request itself, as a test double would.
/// struct Canned;
///
/// impl HttpClient for Canned {
///     fn send(
///         &self,
///         _request: http::Request<Bytes>,
///     ) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
///         let body = Full::new(Bytes::from_static(br#"{"access_token":"at","token_type":"Bearer"}"#))
///             .map_err(|never| match never {})
///             .boxed_unsync();
///         Box::pin(async move { Ok(http::Response::new(body)) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let grant = ClientCredentials::new("https://login.example.com/token", "svc", "s3cr3t")
///     .http_client(Canned);
/// let layer = RefreshLayer::new(grant);
/// layer.refresh().await.unwrap();
/// assert_eq!(layer.stats().generation, 1);
/// # }
/// ```
pub trait HttpClient: Send + Sync + 'static {
    /// Sends `request` and returns the answer, whatever its status.
    fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>>;
}

impl fmt::Debug for dyn HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpClient")
    }
}

#[cfg(feature = "reqwest")]
pub(crate) use with_reqwest::default_client;

#[cfg(feature = "reqwest")]
mod with_reqwest {
    use std::sync::{Arc, OnceLock};

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::{HttpClient, ResponseBody};
    use crate::error::{ConfigurationError, TransientError, TransientKind};
    use crate::source::BoxFuture;

    /// One client for every grant that was given none, so they share a connection pool.
    pub(crate) fn default_client() -> Result<Arc<dyn HttpClient>, ConfigurationError> {
        static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
        let client = CLIENT.get_or_init(|| {
            reqwest::Client::builder()
                // A redirect would carry the client's credentials to another address.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|error| error.to_string())
        });
        match client {
            Ok(client) => Ok(Arc::new(client.clone())),
            Err(reason) => Err(
                ConfigurationError::local("http_client").with_description(format!(
                    "the default HTTP client could not be built: {reason}"
                )),
            ),
        }
    }

    /// A `reqwest::Client` sends token requests as it is. Build it with
    /// `redirect(Policy::none())`: a token endpoint has no business redirecting, and a
    /// redirect would carry the client's credentials elsewhere.
    impl HttpClient for reqwest::Client {
        fn send(
            &self,
            request: http::Request<Bytes>,
        ) -> BoxFuture<'_, Result<http::Response<ResponseBody>, TransientError>> {
            Box::pin(async move {
                let request = reqwest::Request::try_from(request).map_err(|error| {
                    TransientError::new(TransientKind::Network).with_source(error.without_url())
                })?;
                let response = self.execute(request).await.map_err(transient)?;
                let response = http::Response::from(response);
                Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
            })
        }
    }

    /// Only a failure to connect proves the request never reached the server.
    fn transient(error: reqwest::Error) -> TransientError {
        let kind = if error.is_timeout() {
            TransientKind::Timeout
        } else {
            TransientKind::Network
        };
        let never_sent = error.is_connect();
        // The URL may carry query parameters; the error's own text is enough.
        TransientError::new(kind)
            .with_resend_safe(never_sent)
            .with_source(error.without_url())
    }
}
