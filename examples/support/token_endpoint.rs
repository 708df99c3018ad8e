//! The token endpoint (RFC 6749 §3.2): client authentication, the three grants, and the
//! JSON answers of §5.1 (tokens) and §5.2 (errors).

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    APP_CLIENT_ID, IssuedAccessToken, IssuedRefreshToken, RefreshTokenStatus, SERVICE_CLIENT_ID,
    SERVICE_CLIENT_SECRET, State, TOKEN_EXCHANGE, form, random_token,
};

/// RFC 8693's URI for an access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A client registered with the server.
struct Client {
    id: &'static str,
    /// `None` for a public client, which proves nothing but its id.
    secret: Option<&'static str>,
}

const CLIENTS: [Client; 2] = [
    Client {
        id: SERVICE_CLIENT_ID,
        secret: Some(SERVICE_CLIENT_SECRET),
    },
    Client {
        id: APP_CLIENT_ID,
        secret: None,
    },
];

/// An error answer (RFC 6749 §5.2).
struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
}

fn invalid_grant(description: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_grant",
        description,
    }
}

fn invalid_client(description: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description,
    }
}

impl State {
    pub(super) fn token(&mut self, headers: &HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
        let form = form(body);
        let param = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        let grant_type = param("grant_type");
        *self
            .token_requests
            .entry(grant_type.to_owned())
            .or_default() += 1;
        let answer = authenticate(headers, param("client_id"), form.get("client_secret"))
            .and_then(|client| match grant_type {
                "client_credentials" => {
                    self.client_credentials(client, form.get("audience").cloned())
                }
                "refresh_token" => self.refresh(client, param("refresh_token")),
                TOKEN_EXCHANGE => self.exchange(
                    client,
                    param("subject_token"),
                    param("subject_token_type"),
                    form.get("audience").cloned(),
                ),
                "authorization_code" => self.redeem_code(
                    client,
                    param("code"),
                    param("redirect_uri"),
                    param("code_verifier"),
                ),
                _ => Err(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    error: "unsupported_grant_type",
                    description: "this server knows client_credentials, refresh_token, authorization_code and token exchange",
                }),
            });
        match answer {
            Ok(tokens) => json_response(StatusCode::OK, tokens),
            Err(refusal) => {
                self.refused_token_requests += 1;
                let body =
                    json!({"error": refusal.error, "error_description": refusal.description});
                let mut response = json_response(refusal.status, body);
                if refusal.status == StatusCode::UNAUTHORIZED {
                    // RFC 6749 §5.2: a 401 names the authentication scheme to use.
                    let challenge = http::HeaderValue::from_static(r#"Basic realm="token""#);
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge);
                }
                response
            }
        }
    }

    /// RFC 6749 §4.4: a confidential client's own token, without a refresh token.
    fn client_credentials(
        &mut self,
        client: &Client,
        audience: Option<String>,
    ) -> Result<Value, Refusal> {
        if client.secret.is_none() {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                error: "unauthorized_client",
                description: "a public client cannot use client_credentials",
            });
        }
        Ok(self.issue_access_token(client.id, audience))
    }

    /// RFC 8693: a confidential client exchanges a live access token issued here for one of
    /// the same subject, for `audience`.
    fn exchange(
        &mut self,
        client: &Client,
        subject_token: &str,
        subject_token_type: &str,
        audience: Option<String>,
    ) -> Result<Value, Refusal> {
        if client.secret.is_none() || subject_token_type != ACCESS_TOKEN_TYPE {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                error: "invalid_request",
                description: "a confidential client exchanges access tokens here",
            });
        }
        let subject = match self.access_tokens.get(subject_token) {
            Some(token) if !token.revoked && Instant::now() < token.expires_at => {
                token.subject.clone()
            }
            _ => {
                return Err(invalid_grant(
                    "the subject token is not a live access token",
                ));
            }
        };
        let mut tokens = self.issue_access_token(&subject, audience);
        tokens["issued_token_type"] = json!(ACCESS_TOKEN_TYPE);
        Ok(tokens)
    }

    /// RFC 6749 §6, with rotation: the refresh token presented is used up, a new one comes
    /// with the new access token.
    fn refresh(&mut self, client: &Client, presented: &str) -> Result<Value, Refusal> {
        let Some(token) = self.refresh_tokens.get_mut(presented) else {
            return Err(invalid_grant("unknown refresh token"));
        };
        if token.client_id != client.id {
            return Err(invalid_grant(
                "the refresh token was issued to another client",
            ));
        }
        let subject = token.subject.clone();
        match token.status {
            RefreshTokenStatus::Live => token.status = RefreshTokenStatus::Used,
            RefreshTokenStatus::Used => {
                return Err(invalid_grant("the refresh token was already used"));
            }
            RefreshTokenStatus::Revoked => {
                return Err(invalid_grant("the refresh token was revoked"));
            }
        }
        Ok(self.issue_with_refresh_token(client, &subject))
    }

    /// RFC 6749 §4.1.3 and RFC 7636 §4.6: a code is redeemed once, by the client it was
    /// issued to, with the same redirect URI and the verifier whose S256 hash is the
    /// challenge.
    fn redeem_code(
        &mut self,
        client: &Client,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<Value, Refusal> {
        let issued = self
            .codes
            .remove(code)
            .ok_or(invalid_grant("unknown or already redeemed code"))?;
        if Instant::now() >= issued.expires_at {
            return Err(invalid_grant("the code expired"));
        }
        if issued.client_id != client.id || issued.redirect_uri != redirect_uri {
            return Err(invalid_grant(
                "the code was issued to another client or redirect URI",
            ));
        }
        if BASE64URL.encode(Sha256::digest(code_verifier)) != issued.code_challenge {
            return Err(invalid_grant(
                "the PKCE verifier does not match the challenge",
            ));
        }
        Ok(self.issue_with_refresh_token(client, &issued.subject))
    }

    fn issue_access_token(&mut self, subject: &str, audience: Option<String>) -> Value {
        let access_token = random_token();
        let issued = IssuedAccessToken {
            number: self.access_tokens.len() + 1,
            subject: subject.to_owned(),
            audience,
            expires_at: Instant::now() + self.access_token_lifetime,
            revoked: false,
        };
        self.access_tokens.insert(access_token.clone(), issued);
        json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime.as_secs(),
        })
    }

    fn issue_with_refresh_token(&mut self, client: &Client, subject: &str) -> Value {
        let refresh_token = random_token();
        let issued = IssuedRefreshToken {
            client_id: client.id.to_owned(),
            subject: subject.to_owned(),
            status: RefreshTokenStatus::Live,
        };
        self.refresh_tokens.insert(refresh_token.clone(), issued);
        let mut tokens = self.issue_access_token(subject, None);
        tokens["refresh_token"] = Value::from(refresh_token);
        tokens
    }
}

/// RFC 6749 §2.3.1: `client_secret_basic` (the `Authorization` header), else
/// `client_secret_post` (the form), else a public client's bare `client_id`.
fn authenticate(
    headers: &HeaderMap,
    form_client_id: &str,
    form_secret: Option<&String>,
) -> Result<&'static Client, Refusal> {
    let (id, secret) = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let (id, secret) = basic_credentials(value.to_str().unwrap_or_default())
                .ok_or(invalid_client("malformed Basic credentials"))?;
            (id, Some(secret))
        }
        None => (form_client_id.to_owned(), form_secret.cloned()),
    };
    let client = CLIENTS
        .iter()
        .find(|client| client.id == id)
        .ok_or(invalid_client("unknown client"))?;
    if client.secret != secret.as_deref() {
        return Err(invalid_client("wrong client secret"));
    }
    Ok(client)
}

/// The client id and secret of a `Basic` header: each form-urlencoded, then Base64.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let decoded = BASE64.decode(value.strip_prefix("Basic ")?).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, then percent-decoding.
fn form_decode(part: &str) -> String {
    let part = part.replace('+', " ");
    percent_encoding::percent_decode_str(&part)
        .decode_utf8_lossy()
        .into_owned()
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        // RFC 6749 §5.1: answers holding tokens must not be cached.
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}
