//! The grants on the wire: token requests to an OAuth 2.0 authorization server.
//!
//! - [`ClientCredentials`]: a service's own token.
//! - [`RefreshTokenGrant`]: a user's token, kept alive with a refresh
//!   token that the server may rotate; a persistence hook stores each new one.
//! - [`AuthorizationCode`]: the first tokens, through a browser sign-in with PKCE.
//! - [`DeviceAuthorization`]: the first tokens on a device without a browser (RFC 8628),
//!   the user signing in on another device.
//! - Revocation (RFC 7009) at sign-out: [`RefreshLayer::sign_out`](crate::RefreshLayer::sign_out)
//!   revokes at a [`RefreshTokenGrant`]'s
//!   [`revocation_url`](RefreshTokenGrant::revocation_url).
//! - [`ServerMetadata::discover`]: the endpoints, from the issuer's URL.
//! - [`ClientAuth`]: how the client authenticates, for every grant: its secret, a JWT it
//!   signs ([`PrivateKeyJwt`] with a [`JwsSigner`]: a built-in ES256 or RS256 key with
//!   feature `jwt-signing`, or a KMS), or an assertion from outside ([`ClientAssertion`]).
//! - [`TokenExchange`]: a token for another audience, in exchange for another token (RFC 8693),
//!   such as another layer's: see [`SecurityToken`].
//! - [`JwtBearer`]: a token for a signed JWT [`Assertion`] (RFC 7523 §2.1), such as a
//!   workload's identity token.
//!
//! Each grant posts a form to the token endpoint with its own HTTP client (never through a
//! [`RefreshLayer`](crate::RefreshLayer)), reads at most 256 KiB of the answer, and
//! classifies failures as the token cell needs them: `invalid_grant` is
//! [`ReauthRequired`](crate::ReauthRequired); `invalid_client`, `unauthorized_client` and
//! `invalid_scope` are a [`ConfigurationError`](crate::ConfigurationError); 5xx, 429,
//! `temporarily_unavailable` and network failures are a
//! [`TransientError`](crate::TransientError) carrying the server's `Retry-After`.
//!
//! Nothing here knows about tower or reqwest-middleware.

mod assertion;
mod authorization_code;
mod client_credentials;
mod discovery;
mod endpoint;
mod http;
pub(crate) mod jws;
mod params;
mod refresh_token;
pub(crate) mod response;
mod signer;
// Token exchange (RFC 8693) and the JWT-bearer grant (RFC 7523 §2.1), with the credentials
// they present.
mod jwt_bearer;
mod supply;
mod token_exchange;
// Sign-out (RFC 7009) and the device authorization grant (RFC 8628).
pub(crate) mod device;
mod revocation;

pub use assertion::{ClientAssertion, PrivateKeyJwt};
pub use authorization_code::{AuthorizationCode, AuthorizationError, PendingAuthorization};
pub use client_credentials::ClientCredentials;
pub use device::{DeviceAuthorization, DeviceAuthorizationError, PendingDeviceAuthorization};
pub use discovery::ServerMetadata;
pub use endpoint::ClientAuth;
pub use http::{HttpClient, ResponseBody};
pub use jwt_bearer::{Assertion, JwtBearer};
pub use params::TokenParams;
pub use refresh_token::RefreshTokenGrant;
#[cfg(feature = "jwt-signing")]
pub use signer::{Es256Key, Rs256Key};
pub use signer::{JwsSigner, SigningKeyError};
pub use token_exchange::{SecurityToken, TokenExchange, token_type};

/// The settings every grant shares, as consuming setters on the grant's `endpoint` field.
macro_rules! endpoint_setters {
    () => {
        /// How the client authenticates: with its secret (default
        /// [`ClientAuth::Basic`](crate::oauth::ClientAuth::Basic)), or with a signed or given
        /// assertion ([`ClientAuth::PrivateKeyJwt`](crate::oauth::ClientAuth::PrivateKeyJwt),
        /// [`ClientAuth::ClientAssertion`](crate::oauth::ClientAuth::ClientAssertion)).
        pub fn client_auth(mut self, auth: impl Into<$crate::oauth::ClientAuth>) -> Self {
            self.endpoint.auth = auth.into();
            self
        }

        /// The HTTP client for token requests. The default is one shared reqwest client that
        /// follows no redirects (feature `reqwest`).
        pub fn http_client(mut self, client: impl $crate::oauth::HttpClient) -> Self {
            self.endpoint.http = Some(std::sync::Arc::new(client));
            self
        }

        /// How long one token request may take, the answer read included (default 10 s).
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.endpoint.timeout = timeout;
            self
        }

        /// Allows sending credentials over plain `http://` to hosts other than loopback
        /// (default `false`: such a token request fails before it is sent).
        pub fn allow_insecure_http(mut self, allow: bool) -> Self {
            self.endpoint.allow_insecure_http = allow;
            self
        }

        /// Binds the tokens to `key` (DPoP, RFC 9449): every token request carries a proof
        /// signed by it and must bring a token of type `DPoP` (a `Bearer` answer is an error
        /// that keeps the refresh token it carried), and a layer over this grant sends each
        /// request with `Authorization: DPoP <token>` and a proof of its own. Nonces are
        /// learned from every answer, and a `use_dpop_nonce` answer is resent once. See
        /// [`dpop`](crate::dpop).
        pub fn dpop(mut self, key: $crate::dpop::DpopKey) -> Self {
            self.endpoint.dpop = Some($crate::dpop::Dpop::new(key));
            self
        }

        /// Treats another OAuth error code like `invalid_grant`: as
        /// [`ReauthRequired`](crate::ReauthRequired), a new sign-in.
        pub fn reauth_on(mut self, code: impl Into<String>) -> Self {
            self.endpoint.reauth_codes.push(code.into());
            self
        }
    };
}
pub(crate) use endpoint_setters;
