//! Reading a token endpoint's answer: RFC 6749 §5.1 (success) and §5.2 (error), and what
//! each failure means for the token cell.
//!
//! The body is read field by field rather than into one struct, so that a bad secondary field
//! (an `expires_in` of `"soon"`, an odd `scope`) never costs the refresh token beside it.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_PAD_INDIFFERENT as BASE64URL;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value};

use crate::error::{
    ConfigurationError, ReauthRequired, RefreshError, TransientError, TransientKind,
};
use crate::token::{AccessToken, MAX_LIFETIME, RefreshToken, TokenSet};

/// How an answer's failures are classified, as the grant and endpoint configure it.
#[derive(Debug)]
pub(crate) struct Rules<'a> {
    /// The token endpoint's host, for [`ReauthRequired`].
    pub(crate) host: Option<&'a str>,
    /// Error codes that mean a new sign-in is needed, besides `invalid_grant`.
    pub(crate) reauth_codes: &'a [String],
    /// Whether a request that got an answer may be sent again. False for a `refresh_token`
    /// grant: the server may have rotated the token before it failed.
    pub(crate) answered_resend_safe: bool,
    /// The request carried a DPoP proof: the answer must be a token of type `DPoP`.
    pub(crate) dpop: bool,
}

/// Turns a token endpoint's answer into a token set or a classified error.
pub(crate) fn token_set(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    rules: &Rules<'_>,
) -> Result<TokenSet, RefreshError> {
    read(status, headers, body, rules, Expect::Bearer).map(|(set, _issued)| set)
}

/// What a grant's answer must say about the token it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// RFC 6749: a `token_type` of `Bearer`, if the answer names one.
    Bearer,
    /// RFC 8693 §2.2.1: an `issued_token_type`, and a `token_type` of `Bearer`, or `N_A` if
    /// the grant accepts a token the server says is not an access token.
    Exchanged { accept_not_access_token: bool },
}

fn read(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    rules: &Rules<'_>,
    expect: Expect,
) -> Result<(TokenSet, Option<String>), RefreshError> {
    let fields = fields(headers, body);
    if let Some(fields) = &fields
        && let Some(code) = fields.get("error").and_then(Value::as_str)
    {
        // RFC 6749 §5.2: an error body is an error whatever the status, a 200 included.
        return Err(error_response(status, headers, code, fields, rules));
    }
    let refresh_token = fields.as_ref().and_then(|f| string(f, "refresh_token"));
    // A redirect that carried a refresh token all the same goes the transient way below,
    // which keeps it.
    if status.is_redirection() && refresh_token.is_none() {
        return Err(redirected(status, headers).into());
    }
    let access_token = fields.as_ref().and_then(|f| string(f, "access_token"));
    let (Some(fields), Some(access_token), true) = (&fields, access_token, status.is_success())
    else {
        let kind = match status.as_u16() {
            429 => TransientKind::RateLimited,
            code @ 500..=599 => TransientKind::ServerError(code),
            _ => TransientKind::InvalidResponse,
        };
        let what = describe_body(headers, body.len(), fields.is_some());
        // A 5xx kind already says the status; the reason adds only what the body was.
        let reason = match kind {
            TransientKind::ServerError(_) => what,
            _ => format!("{status} with {what}"),
        };
        return Err(transient(kind, headers, rules, refresh_token)
            .with_source(reason)
            .into());
    };
    // An exchange may issue a token the server says is not an access token (`N_A`): whether
    // it is taken is decided below, with its `issued_token_type`.
    let exchanged = matches!(expect, Expect::Exchanged { .. });
    let token_type = fields.get("token_type").and_then(Value::as_str);
    let wrong_type = match (token_type, rules.dpop) {
        (Some(NOT_APPLICABLE), _) if exchanged => None,
        // A proof went with the request: a token sent without one would be refused, and a
        // Bearer token in its place would undo what the key is for.
        (Some(token_type), true) if token_type.eq_ignore_ascii_case("dpop") => None,
        (token_type, true) => Some(format!(
            "a token of type {:?} was issued where a DPoP-bound one was asked for: does the \
             server support DPoP for this client?",
            printable(token_type.unwrap_or_default(), 40)
        )),
        (Some(token_type), false) if !token_type.eq_ignore_ascii_case("bearer") => Some(format!(
            "a token of type {:?} was issued, not Bearer",
            printable(token_type, 40)
        )),
        (_, false) => None,
    };
    if let Some(reason) = wrong_type {
        return Err(transient(
            TransientKind::InvalidResponse,
            headers,
            rules,
            refresh_token,
        )
        .with_source(reason)
        .into());
    }
    let issued = match expect {
        Expect::Bearer => None,
        Expect::Exchanged {
            accept_not_access_token,
        } => match exchanged_type(fields, accept_not_access_token) {
            Ok(issued) => Some(issued),
            Err(Unusable::Malformed(reason)) => {
                let error = transient(
                    TransientKind::InvalidResponse,
                    headers,
                    rules,
                    refresh_token,
                );
                return Err(error.with_source(reason).into());
            }
            Err(Unusable::NotAnAccessToken(description)) => {
                return Err(ConfigurationError::local("not_an_access_token")
                    .with_description(description)
                    .into());
            }
        },
    };
    let expires_in = match fields.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let lifetime = lifetime(value);
            if lifetime.is_none() {
                tracing::warn!("the token endpoint sent an unreadable expires_in; ignoring it");
            }
            lifetime
        }
    }
    .or_else(|| jwt_lifetime(&access_token, SystemTime::now()));
    let mut set = TokenSet::new(AccessToken::new(access_token));
    set.refresh_token = refresh_token.map(RefreshToken::new);
    set.expires_in = expires_in;
    set.scope = string(fields, "scope");
    Ok((set, issued))
}

/// RFC 8693 §2.2.1's `token_type` for a token that is not an access token.
const NOT_APPLICABLE: &str = "N_A";

/// RFC 8693's URI for a refresh token: never sent as an access token, whatever the answer says.
const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";

/// A token exchange's answer (RFC 8693 §2.2.1) read into a token set, and the
/// `issued_token_type` it names.
///
/// Besides what [`token_set`] checks: `issued_token_type` is required; an issued refresh
/// token is refused (it must never travel in an `Authorization` header); `token_type` `N_A`
/// (the server says the token is not an access token) is refused unless
/// `accept_not_access_token`.
pub(crate) fn exchanged_token_set(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    rules: &Rules<'_>,
    accept_not_access_token: bool,
) -> Result<(TokenSet, String), RefreshError> {
    let expect = Expect::Exchanged {
        accept_not_access_token,
    };
    let (set, issued) = read(status, headers, body, rules, expect)?;
    let issued = issued.expect("an exchanged answer names its issued_token_type");
    Ok((set, issued))
}

/// Why an exchange's answer cannot be used.
enum Unusable {
    /// It is not what RFC 8693 says an answer is: transient, like any unreadable answer.
    Malformed(String),
    /// It carries a token that is not an access token: resending cannot help, asking for
    /// another `requested_token_type` can.
    NotAnAccessToken(String),
}

/// The `issued_token_type` of an exchange's answer, or why the answer cannot be used.
fn exchanged_type(
    fields: &Map<String, Value>,
    accept_not_access_token: bool,
) -> Result<String, Unusable> {
    let Some(issued) = string(fields, "issued_token_type") else {
        return Err(Unusable::Malformed(
            "a token exchange answer without issued_token_type (RFC 8693 §2.2.1)".to_owned(),
        ));
    };
    if issued == REFRESH_TOKEN_TYPE {
        return Err(Unusable::NotAnAccessToken(
            "the token exchange issued a refresh token, which is never sent as an access \
             token; ask for another requested_token_type"
                .to_owned(),
        ));
    }
    let not_an_access_token =
        fields.get("token_type").and_then(Value::as_str) == Some(NOT_APPLICABLE);
    if not_an_access_token && !accept_not_access_token {
        return Err(Unusable::NotAnAccessToken(format!(
            "the token exchange issued a {} with token_type N_A, which the server says is \
             not an access token; ask for requested_token_type access_token, or accept it \
             with accept_not_access_token(true)",
            printable(&issued, 80)
        )));
    }
    Ok(issued)
}

/// The body's fields: a JSON object whatever the content type claims, or a form-encoded body
/// (some older servers answer so).
pub(crate) fn fields(headers: &HeaderMap, body: &[u8]) -> Option<Map<String, Value>> {
    if let Ok(Value::Object(fields)) = serde_json::from_slice(body) {
        return Some(fields);
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    form.then(|| {
        url::form_urlencoded::parse(body)
            .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
            .collect()
    })
}

/// The OAuth `error` code of an answer, if it is an error answer.
pub(crate) fn error_code(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    string(&fields(headers, body)?, "error")
}

pub(crate) fn string(fields: &Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name) {
        Some(Value::String(value)) if !value.is_empty() => Some(value.clone()),
        _ => None,
    }
}

/// `expires_in` as a JSON number or a string of digits, cut to [`MAX_LIFETIME`]: a number
/// too large for any clock (`u64::MAX`, `1e300`, twenty nines) is survivable, never an
/// overflow later on.
pub(crate) fn lifetime(value: &Value) -> Option<Duration> {
    let seconds = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0)
                // `as` saturates: 1e300 and infinity are u64::MAX.
                .map(|f| f as u64)
        })?,
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<u64>() {
                Ok(seconds) => seconds,
                // Digits beyond u64: as long as anything can be.
                Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => u64::MAX,
                Err(_) => return None,
            }
        }
        _ => return None,
    };
    Some(Duration::from_secs(seconds).min(MAX_LIFETIME))
}

/// The lifetime a JWT access token states in its `exp` claim. The token is not verified:
/// this serves scheduling only, and a rejected request remains the backstop.
pub(crate) fn jwt_lifetime(access_token: &str, now: SystemTime) -> Option<Duration> {
    let mut parts = access_token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let claims: Value = serde_json::from_slice(&BASE64URL.decode(payload).ok()?).ok()?;
    let exp = match claims.get("exp")? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))?,
        _ => return None,
    };
    let expires_at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))?;
    Some(
        expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_LIFETIME),
    )
}

fn error_response(
    status: StatusCode,
    headers: &HeaderMap,
    code: &str,
    fields: &Map<String, Value>,
    rules: &Rules<'_>,
) -> RefreshError {
    let code = printable(code, 64);
    let description = fields
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| printable(d, 300));
    let refresh_token = string(fields, "refresh_token");
    if code == "invalid_grant" || rules.reauth_codes.contains(&code) {
        let mut error = ReauthRequired::new(code);
        if let Some(description) = description {
            error = error.with_description(description);
        }
        if let Some(uri) = fields.get("error_uri").and_then(Value::as_str) {
            error = error.with_uri(printable(uri, 300));
        }
        if let Some(host) = rules.host {
            error = error.with_host(host);
        }
        return error.into();
    }
    let kind = match (code.as_str(), status.as_u16()) {
        ("temporarily_unavailable", _) => Some(TransientKind::TemporarilyUnavailable),
        // DPoP: the server wanted a nonce still newer than the one just learned and resent
        // with (it rotated meanwhile); the next attempt carries the newest.
        ("use_dpop_nonce", _) => Some(TransientKind::TemporarilyUnavailable),
        ("server_error", status) => Some(TransientKind::ServerError(status)),
        (_, 429) => Some(TransientKind::RateLimited),
        (_, status @ 500..=599) => Some(TransientKind::ServerError(status)),
        _ => None,
    };
    let reason = match &description {
        Some(description) => format!("{code}: {description}"),
        None => code.clone(),
    };
    match kind {
        Some(kind) => transient(kind, headers, rules, refresh_token)
            .with_source(reason)
            .into(),
        // invalid_client, unauthorized_client, invalid_scope, invalid_request,
        // unsupported_grant_type, and codes this crate does not know.
        None => {
            let mut error = ConfigurationError::new(code);
            if let Some(description) = description {
                error = error.with_description(description);
            }
            error.into()
        }
    }
}

fn transient(
    kind: TransientKind,
    headers: &HeaderMap,
    rules: &Rules<'_>,
    refresh_token: Option<String>,
) -> TransientError {
    let mut error = TransientError::new(kind).with_resend_safe(rules.answered_resend_safe);
    if let Some(retry_after) = retry_after(headers, SystemTime::now()) {
        error = error.with_retry_after(retry_after);
    }
    if let Some(refresh_token) = refresh_token {
        // The answer was unusable, but the server may have rotated the refresh token all the
        // same: the cell keeps it.
        error = error.with_refresh_token(RefreshToken::new(refresh_token));
    }
    error
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A token endpoint that redirects is a wrong token URL (most often a missing or extra
/// trailing slash, or `http` for `https`), not a passing failure: resending cannot help, and
/// following it would carry the client's credentials to another address.
fn redirected(status: StatusCode, headers: &HeaderMap) -> ConfigurationError {
    let location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        // The query may carry anything; the path is what tells the user what to fix.
        .map(|v| printable(v.split(['?', '#']).next().unwrap_or_default(), 200));
    let to = match &location {
        Some(location) => format!(" to {location}"),
        None => String::new(),
    };
    ConfigurationError::local("token_endpoint_redirect").with_description(format!(
        "the token endpoint answered {status} with a redirect{to}: the token URL is wrong \
         (a missing or extra trailing slash, or http for https?); configure the URL it names"
    ))
}

/// Says what was wrong with an answer's body without quoting it, since it may hold secrets.
fn describe_body(headers: &HeaderMap, length: usize, parsed: bool) -> String {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| printable(v, 80));
    match (length, parsed) {
        (0, _) => "an empty body".to_owned(),
        (_, true) => "a body without an access_token".to_owned(),
        (length, false) => match content_type {
            Some(content_type) => format!("a {length}-byte {content_type} body that is not JSON"),
            None => format!("a {length}-byte body that is not JSON"),
        },
    }
}

/// A server-supplied string fit for an error message: printable ASCII, at most `max` chars.
pub(crate) fn printable(value: &str, max: usize) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .take(max)
        .collect()
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod exchange_properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RefreshErrorKind;
    use serde_json::json;

    const RULES: Rules<'static> = Rules {
        host: Some("login.example.com"),
        reauth_codes: &[],
        answered_resend_safe: false,
        dpop: false,
    };

    fn parse(status: u16, body: &str) -> Result<TokenSet, RefreshError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        token_set(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            body.as_bytes(),
            &RULES,
        )
    }

    fn jwt(claims: Value) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            engine.encode(br#"{"alg":"RS256"}"#),
            engine.encode(claims.to_string())
        )
    }

    #[test]
    fn a_full_answer_is_read() {
        let set = parse(
            200,
            r#"{"access_token":"at","token_type":"Bearer","expires_in":3600,"refresh_token":"rt","scope":"a b","extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(set.access_token.secret(), "at");
        assert_eq!(set.refresh_token.unwrap().secret(), "rt");
        assert_eq!(set.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(set.scope.as_deref(), Some("a b"));
    }

    #[test]
    fn expires_in_may_be_a_string_zero_or_missing() {
        let as_string = parse(200, r#"{"access_token":"at","expires_in":"3600"}"#).unwrap();
        assert_eq!(as_string.expires_in, Some(Duration::from_secs(3600)));
        let zero = parse(200, r#"{"access_token":"at","expires_in":0}"#).unwrap();
        assert_eq!(zero.expires_in, Some(Duration::ZERO));
        let missing = parse(200, r#"{"access_token":"at"}"#).unwrap();
        assert_eq!(missing.expires_in, None);
    }

    #[test]
    fn token_type_is_case_insensitive() {
        for token_type in ["bearer", "BEARER", "Bearer"] {
            let body = json!({"access_token": "at", "token_type": token_type}).to_string();
            assert!(parse(200, &body).is_ok(), "{token_type}");
        }
        let err = parse(
            200,
            r#"{"access_token":"at","token_type":"DPoP","refresh_token":"rt"}"#,
        )
        .unwrap_err();
        let RefreshError::Transient(err) = err else {
            panic!("{err:?}")
        };
        assert_eq!(err.received_refresh_token().unwrap().secret(), "rt");
    }

    #[test]
    fn a_bad_secondary_field_keeps_the_refresh_token() {
        let set = parse(
            200,
            r#"{"access_token":"at","refresh_token":"rt","expires_in":"soon","scope":17}"#,
        )
        .unwrap();
        assert_eq!(set.refresh_token.unwrap().secret(), "rt");
        assert_eq!(set.expires_in, None);
        assert_eq!(set.scope, None);

        let err = parse(200, r#"{"access_token":17,"refresh_token":"rt"}"#).unwrap_err();
        let RefreshError::Transient(err) = err else {
            panic!("{err:?}")
        };
        assert_eq!(err.kind(), TransientKind::InvalidResponse);
        assert_eq!(err.received_refresh_token().unwrap().secret(), "rt");
    }

    #[test]
    fn an_error_inside_a_200_is_an_error() {
        let err = parse(
            200,
            r#"{"error":"invalid_grant","error_description":"revoked"}"#,
        )
        .unwrap_err();
        let RefreshError::Reauth(err) = err else {
            panic!("{err:?}")
        };
        assert_eq!(err.error(), "invalid_grant");
        assert_eq!(err.description(), Some("revoked"));
        assert_eq!(err.host(), Some("login.example.com"));
    }

    #[test]
    fn error_codes_map_to_their_classes() {
        let class = |status, code: &str| {
            parse(status, &json!({ "error": code }).to_string())
                .unwrap_err()
                .kind()
        };
        assert_eq!(class(400, "invalid_grant"), RefreshErrorKind::Reauth);
        for code in [
            "invalid_client",
            "unauthorized_client",
            "invalid_scope",
            "invalid_request",
        ] {
            assert_eq!(class(400, code), RefreshErrorKind::Configuration, "{code}");
        }
        assert_eq!(
            class(401, "invalid_client"),
            RefreshErrorKind::Configuration
        );
        assert_eq!(
            class(503, "temporarily_unavailable"),
            RefreshErrorKind::Transient
        );
        assert_eq!(
            class(200, "temporarily_unavailable"),
            RefreshErrorKind::Transient
        );
        assert_eq!(class(500, "server_error"), RefreshErrorKind::Transient);
        assert_eq!(class(502, "bad_gateway"), RefreshErrorKind::Transient);
        assert_eq!(class(429, "slow_down"), RefreshErrorKind::Transient);
    }

    #[test]
    fn configured_codes_mean_reauth() {
        let codes = ["consent_required".to_owned()];
        let rules = Rules {
            reauth_codes: &codes,
            ..RULES
        };
        let err = token_set(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":"consent_required"}"#,
            &rules,
        )
        .unwrap_err();
        assert_eq!(err.kind(), RefreshErrorKind::Reauth);
    }

    #[test]
    fn unusable_answers_are_transient_and_never_quoted() {
        let cases = [
            (200, ""),
            (200, "<html>s3cr3t page</html>"),
            (400, "<html>s3cr3t page</html>"),
            (200, r#"{"token":"s3cr3t"}"#),
            (200, "[1,2]"),
        ];
        for (status, body) in cases {
            let err = parse(status, body).unwrap_err();
            let RefreshError::Transient(transient) = &err else {
                panic!("{status} {body}: {err:?}")
            };
            assert_eq!(transient.kind(), TransientKind::InvalidResponse);
            let printed = format!(
                "{err} {err:?} {}",
                std::error::Error::source(transient).unwrap()
            );
            assert!(!printed.contains("s3cr3t"), "{printed}");
        }
        let RefreshError::Transient(err) = parse(503, "<html>down</html>").unwrap_err() else {
            panic!()
        };
        assert_eq!(err.kind(), TransientKind::ServerError(503));
        assert!(
            !err.is_resend_safe(),
            "a refresh that reached the server is not resent"
        );
    }

    #[test]
    fn a_reason_does_not_repeat_what_its_kind_says() {
        let cases = [
            (503, "<html>down</html>"),
            (500, ""),
            (429, ""),
            (200, "<html>a page</html>"),
            (200, r#"{"access_token":"at","token_type":"DPoP"}"#),
        ];
        for (status, body) in cases {
            let RefreshError::Transient(err) = parse(status, body).unwrap_err() else {
                panic!("{status} {body}")
            };
            let reason = std::error::Error::source(&err).unwrap().to_string();
            assert!(!reason.contains("token endpoint"), "{err}: {reason}");
            if let TransientKind::ServerError(code) = err.kind() {
                assert!(!reason.contains(&code.to_string()), "{err}: {reason}");
            }
        }
    }

    #[test]
    fn form_encoded_answers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let set = token_set(
            StatusCode::OK,
            &headers,
            b"access_token=a%2Bt&token_type=bearer&expires_in=60",
            &RULES,
        )
        .unwrap();
        assert_eq!(set.access_token.secret(), "a+t");
        assert_eq!(set.expires_in, Some(Duration::from_secs(60)));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        headers.insert(header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, now), None);
    }

    fn exchange(
        status: u16,
        body: &str,
        accept_na: bool,
    ) -> Result<(TokenSet, String), RefreshError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let status = StatusCode::from_u16(status).unwrap();
        exchanged_token_set(status, &headers, body.as_bytes(), &RULES, accept_na)
    }

    const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

    #[test]
    fn an_exchange_answer_names_its_issued_token_type() {
        let body = json!({
            "access_token": "at", "token_type": "Bearer", "expires_in": 60,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        });
        let (set, issued) = exchange(200, &body.to_string(), false).unwrap();
        assert_eq!(set.access_token.secret(), "at");
        assert_eq!(set.expires_in, Some(Duration::from_secs(60)));
        assert_eq!(issued, "urn:ietf:params:oauth:token-type:access_token");
        // What the plain parser makes of it is unchanged.
        assert!(parse(200, &body.to_string()).is_ok());
    }

    #[test]
    fn an_exchange_answer_without_issued_token_type_is_unreadable() {
        let body = r#"{"access_token":"at","token_type":"Bearer","refresh_token":"rt"}"#;
        let RefreshError::Transient(err) = exchange(200, body, false).unwrap_err() else {
            panic!()
        };
        assert_eq!(err.kind(), TransientKind::InvalidResponse);
        assert!(
            std::error::Error::source(&err)
                .unwrap()
                .to_string()
                .contains("issued_token_type")
        );
        assert_eq!(err.received_refresh_token().unwrap().secret(), "rt");
    }

    #[test]
    fn n_a_is_refused_unless_accepted_and_a_refresh_token_always() {
        let na =
            json!({"access_token": "id-token", "token_type": "N_A", "issued_token_type": JWT_TYPE});
        let RefreshError::Configuration(err) = exchange(200, &na.to_string(), false).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(err.error(), "not_an_access_token");
        assert!(err.to_string().contains("accept_not_access_token"), "{err}");
        let (set, issued) = exchange(200, &na.to_string(), true).unwrap();
        assert_eq!(
            (set.access_token.secret(), issued.as_str()),
            ("id-token", JWT_TYPE)
        );
        // N_A means nothing outside an exchange: the plain parser refuses it as before.
        assert_eq!(
            parse(200, &na.to_string()).unwrap_err().kind(),
            RefreshErrorKind::Transient
        );

        let refresh = json!({
            "access_token": "rt-as-at", "token_type": "N_A",
            "issued_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
        });
        for accept in [false, true] {
            let err = exchange(200, &refresh.to_string(), accept).unwrap_err();
            assert_eq!(err.kind(), RefreshErrorKind::Configuration, "{err}");
        }
        // Any other type than Bearer or N_A is refused as for every grant.
        let dpop =
            json!({"access_token": "at", "token_type": "DPoP", "issued_token_type": JWT_TYPE});
        assert_eq!(
            exchange(200, &dpop.to_string(), true).unwrap_err().kind(),
            RefreshErrorKind::Transient
        );
    }

    #[test]
    fn exchange_errors_land_in_the_classes_of_every_grant() {
        let err = exchange(400, r#"{"error":"invalid_grant"}"#, false).unwrap_err();
        assert_eq!(err.kind(), RefreshErrorKind::Reauth);
        let err = exchange(400, r#"{"error":"invalid_target"}"#, false).unwrap_err();
        assert_eq!(err.kind(), RefreshErrorKind::Configuration);
        let err = exchange(503, "", false).unwrap_err();
        assert_eq!(err.kind(), RefreshErrorKind::Transient);
    }

    #[test]
    fn jwt_exp_gives_the_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = jwt(json!({"sub": "svc", "exp": 1_700_000_300}));
        assert_eq!(jwt_lifetime(&token, now), Some(Duration::from_secs(300)));
        let past = jwt(json!({"exp": 1_600_000_000}));
        assert_eq!(jwt_lifetime(&past, now), Some(Duration::ZERO));
        assert_eq!(jwt_lifetime(&jwt(json!({"sub": "svc"})), now), None);
        assert_eq!(jwt_lifetime("opaque-token", now), None);
        assert_eq!(jwt_lifetime("a.!!!.c", now), None);
        assert_eq!(jwt_lifetime("a.b.c.d.e", now), None);
    }

    #[test]
    fn a_jwt_without_expires_in_is_scheduled_by_its_exp() {
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let body = json!({"access_token": jwt(json!({"exp": exp})), "token_type": "Bearer"});
        let set = parse(200, &body.to_string()).unwrap();
        let lifetime = set.expires_in.unwrap();
        assert!(lifetime <= Duration::from_secs(600) && lifetime >= Duration::from_secs(590));
    }
}
