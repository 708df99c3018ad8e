//! Entry points for the `cargo fuzz` targets in `fuzz/`, compiled only with `--cfg fuzzing`
//! (which `cargo fuzz` sets). Not part of the API.
//!
//! Each one runs a crate-private parser on the fuzzer's bytes and panics if an invariant
//! breaks, not only if the parser does: what comes out is well formed, it survives a round
//! trip, and a refresh token that parsed is never lost.

use std::time::{Duration, SystemTime};

use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

use crate::classify::{
    Challenge, assert_well_formed, challenges, default_verdict, parse_challenges,
};
use crate::error::RefreshError;
use crate::oauth::device::{
    DEFAULT_INTERVAL, MAX_DEVICE_CODE_LIFETIME, MAX_INTERVAL, MIN_INTERVAL, PollAnswer,
    device_authorization as read_device_authorization, poll_answer,
};
use crate::oauth::response::{Rules, exchanged_token_set, fields, jwt_lifetime, token_set};
use crate::token::{RefreshToken, TokenSet};

type Owned = (String, Option<String>, Vec<(String, String)>);

fn owned(challenges: &[Challenge<'_>]) -> Vec<Owned> {
    challenges
        .iter()
        .map(|c| {
            let params = c.params().map(|(n, v)| (n.to_owned(), v.to_owned()));
            (
                c.scheme().to_owned(),
                c.token68().map(str::to_owned),
                params.collect(),
            )
        })
        .collect()
}

/// Writes challenges back as a header value, every value as a quoted-string.
fn render(challenges: &[Owned]) -> String {
    let rendered: Vec<String> = challenges
        .iter()
        .map(|(scheme, token68, params)| {
            if let Some(token68) = token68 {
                return format!("{scheme} {token68}");
            }
            if params.is_empty() {
                return scheme.clone();
            }
            let params: Vec<String> = params
                .iter()
                .map(|(name, value)| {
                    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
                    format!("{name}=\"{escaped}\"")
                })
                .collect();
            format!("{scheme} {}", params.join(", "))
        })
        .collect();
    rendered.join(", ")
}

/// Parses the bytes as a `WWW-Authenticate` value (lossily as a string, and as a header line
/// when they are one) and checks: schemes and param names are tokens, a token68 is well formed
/// and never comes with params, values hold no control character but tab, and the challenges
/// written back as a header value parse to the same challenges.
pub fn www_authenticate(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_challenges(&text);
    assert_well_formed(&parsed);
    let parsed = owned(&parsed);
    let rendered = render(&parsed);
    assert_eq!(
        owned(&parse_challenges(&rendered)),
        parsed,
        "{text:?} written back as {rendered:?}"
    );

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.append(WWW_AUTHENTICATE, value.clone());
        headers.append(WWW_AUTHENTICATE, value);
        let from_headers: Vec<_> = challenges(&headers).collect();
        if data.is_ascii() {
            assert_eq!(owned(&from_headers).len(), 2 * parsed.len());
        } else {
            assert!(
                from_headers.is_empty(),
                "a line that is not ASCII is skipped"
            );
        }
        let _ = default_verdict(StatusCode::UNAUTHORIZED, &headers);
    }
}

const STATUSES: [u16; 8] = [200, 200, 201, 400, 401, 429, 500, 503];
const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    None,
    Some("text/html"),
];

/// The refresh token a body carries, read the way RFC 6749 writes it, and whether it has an
/// `error` string.
fn refresh_token_in(form: bool, body: &[u8]) -> (Option<String>, bool) {
    let fields: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => fields,
        _ if form => url::form_urlencoded::parse(body)
            .map(|(n, v)| (n.into_owned(), Value::String(v.into_owned())))
            .collect(),
        _ => return (None, false),
    };
    let refresh_token = fields
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let error = fields.get("error").is_some_and(Value::is_string);
    (refresh_token.map(str::to_owned), error)
}

/// Parses the bytes after the first as a token endpoint's answer; the first byte picks the
/// status, the content type and the rules. Checks: a success has a 2xx status and reads back
/// the same from the token set written as JSON; a refresh token in the body is in the token
/// set or the transient error; only a body with an `error` string is a reauth or configuration
/// error.
pub fn token_response(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = StatusCode::from_u16(STATUSES[usize::from(first & 7)]).unwrap();
    let content_type = CONTENT_TYPES[usize::from((first >> 3) & 3)];
    let mut headers = HeaderMap::new();
    if let Some(content_type) = content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if first & 0x20 != 0 {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
    }
    let reauth_codes = ["consent_required".to_owned()];
    let rules = Rules {
        host: Some("login.example.com"),
        reauth_codes: if first & 0x40 != 0 {
            &reauth_codes
        } else {
            &[]
        },
        answered_resend_safe: first & 0x80 != 0,
        dpop: false,
    };
    let result = token_set(status, &headers, body, &rules);
    let _ = format!("{result:?}");

    let form = content_type == CONTENT_TYPES[1];
    let (refresh_token, error) = refresh_token_in(form, body);
    match &result {
        Ok(set) => {
            assert!(status.is_success() && !error, "{status}: {set:?}");
            assert!(!set.access_token.secret().is_empty());
            assert_eq!(
                set.refresh_token.as_ref().map(RefreshToken::secret),
                refresh_token.as_deref()
            );
            round_trip(set, &rules);
        }
        Err(err) => {
            let _ = err.to_string();
            match err {
                RefreshError::Transient(err) => {
                    assert_eq!(
                        err.received_refresh_token().map(RefreshToken::secret),
                        refresh_token.as_deref(),
                        "a parsed refresh token was lost"
                    );
                    assert_eq!(err.is_resend_safe(), rules.answered_resend_safe);
                }
                other => assert!(error, "{other:?} from a body without an error"),
            }
        }
    }
}

/// RFC 8693's URI for a refresh token, which an exchange never takes for an access token.
const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";

/// Parses the bytes after the first as a token exchange's answer (RFC 8693 §2.2); the first
/// byte picks the status, the content type, the rules and whether `N_A` is accepted. Checks,
/// beside the plain answer's: a success names a non-empty `issued_token_type` that is not
/// the refresh token's, and its `token_type` is Bearer, or `N_A` only when accepted; what the
/// plain reader refuses, the exchange refuses in the same class, but for an accepted `N_A`; a
/// refresh token in the body is in the token set or the transient error unless the answer is
/// refused as not an access token.
pub fn token_exchange_response(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = StatusCode::from_u16(STATUSES[usize::from(first & 7)]).unwrap();
    let content_type = CONTENT_TYPES[usize::from((first >> 3) & 3)];
    let mut headers = HeaderMap::new();
    if let Some(content_type) = content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    let accept = first & 0x20 != 0;
    let rules = Rules {
        host: Some("login.example.com"),
        reauth_codes: &[],
        answered_resend_safe: first & 0x80 != 0,
        dpop: false,
    };
    let plain = token_set(status, &headers, body, &rules);
    let result = exchanged_token_set(status, &headers, body, &rules, accept);
    let _ = format!("{result:?}");

    let form = content_type == CONTENT_TYPES[1];
    let (refresh_token, error) = refresh_token_in(form, body);
    let token_type = token_type_in(form, body);
    let n_a = token_type.as_deref() == Some("N_A");
    match &result {
        Ok((set, issued)) => {
            assert!(status.is_success() && !error, "{status}: {set:?}");
            assert!(
                !issued.is_empty() && issued != REFRESH_TOKEN_TYPE,
                "{issued:?}"
            );
            assert!(!n_a || accept, "N_A taken without being accepted");
            assert_eq!(
                set.refresh_token.as_ref().map(RefreshToken::secret),
                refresh_token.as_deref()
            );
            match &plain {
                Ok(plain) => assert_eq!(plain.access_token, set.access_token),
                Err(err) => assert!(n_a, "the plain reader refused it: {err:?}"),
            }
        }
        Err(err) => {
            let _ = err.to_string();
            if let (Err(plain), false) = (&plain, n_a) {
                assert_eq!(plain.kind(), err.kind(), "{plain:?} / {err:?}");
            }
            match err {
                RefreshError::Transient(err) => {
                    assert_eq!(
                        err.received_refresh_token().map(RefreshToken::secret),
                        refresh_token.as_deref(),
                        "a parsed refresh token was lost"
                    );
                    assert_eq!(err.is_resend_safe(), rules.answered_resend_safe);
                }
                RefreshError::Configuration(err)
                    if err.error() == "not_an_access_token"
                        || err.error() == "token_endpoint_redirect" => {}
                other => assert!(error, "{other:?} from a body without an error"),
            }
        }
    }
}

/// The `token_type` string a body carries, read as [`refresh_token_in`] reads.
fn token_type_in(form: bool, body: &[u8]) -> Option<String> {
    let fields: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => fields,
        _ if form => url::form_urlencoded::parse(body)
            .map(|(n, v)| (n.into_owned(), Value::String(v.into_owned())))
            .collect(),
        _ => return None,
    };
    fields
        .get("token_type")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The token set written as a §5.1 JSON answer reads back the same.
fn round_trip(set: &TokenSet, rules: &Rules<'_>) {
    let mut answer = json!({
        "access_token": set.access_token.secret(),
        "token_type": "Bearer",
    });
    if let Some(expires_in) = set.expires_in {
        answer["expires_in"] = json!(expires_in.as_secs());
    }
    if let Some(refresh_token) = &set.refresh_token {
        answer["refresh_token"] = json!(refresh_token.secret());
    }
    if let Some(scope) = &set.scope {
        answer["scope"] = json!(scope);
    }
    let body = answer.to_string();
    let again = token_set(StatusCode::OK, &HeaderMap::new(), body.as_bytes(), rules)
        .unwrap_or_else(|err| panic!("{body}: {err:?}"));
    assert_eq!(again.access_token, set.access_token);
    assert_eq!(again.refresh_token, set.refresh_token);
    assert_eq!(again.scope, set.scope);
    assert_eq!(
        again.expires_in.map(|d| d.as_secs()),
        set.expires_in.map(|d| d.as_secs())
    );
}

/// Reads a JWT's `exp` from the bytes taken as a whole token, from a token whose payload they
/// are, and from a token whose claims they make up (the first 8 bytes the `exp`, the rest
/// another claim); payloads in base64url, padded and not. Checks: a lifetime only comes from
/// three parts, and a payload that is a JSON object with a number `exp` gives `exp - now`,
/// zero once past.
pub fn jwt_exp(data: &[u8]) {
    let now = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
    let text = String::from_utf8_lossy(data);
    if jwt_lifetime(&text, now).is_some() {
        assert_eq!(text.matches('.').count(), 2, "{text:?}");
    }
    check_payload(data, now);

    if let Some((exp, rest)) = data.split_first_chunk::<8>() {
        // Mostly plausible times, so that both sides of `now` come up.
        let exp = u64::from_le_bytes(*exp);
        let exp = match exp % 4 {
            0 => json!(exp),
            1 => json!(exp % 4_000_000_000),
            2 => json!((exp % 4_000_000_000) as f64 + 0.5),
            _ => json!(-((exp % 1_000_000) as i64)),
        };
        let claims = json!({"sub": String::from_utf8_lossy(rest), "exp": exp});
        check_payload(claims.to_string().as_bytes(), now);
    }
}

/// The lifetime of a token with this payload is `exp - now` if it is a JSON object with a
/// number `exp`, and unknown otherwise.
fn check_payload(data: &[u8], now: SystemTime) {
    let expected = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(claims)) => match claims.get("exp") {
            Some(Value::Number(exp)) => {
                let seconds = exp
                    .as_u64()
                    .unwrap_or_else(|| exp.as_f64().map_or(0, |f| f.max(0.0) as u64));
                SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_secs(seconds))
                    .map(|at| at.duration_since(now).unwrap_or_default())
            }
            _ => None,
        },
        _ => None,
    };
    for engine in [
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        use base64::Engine;
        let token = format!("eyJhbGciOiJub25lIn0.{}.", engine.encode(data));
        assert_eq!(jwt_lifetime(&token, now), expected, "{token}");
    }
}

/// Parses the bytes after the first as a device authorization endpoint's answer (RFC 8628
/// §3.2), and as the token endpoint's answer to a device code poll; the first byte picks the
/// status and the content type as for [`token_response`]. Checks: an answer is read only from
/// a success whose body has no `error`, with a device code, a user code and a verification
/// URI, none with control characters, and its `expires_in` and `interval` within their bounds
/// (5 s when no interval is given); `Debug` never shows the device code; the poll reader maps
/// the RFC 8628 codes to their answers.
pub fn device_authorization(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = StatusCode::from_u16(STATUSES[usize::from(first & 7)]).unwrap();
    let content_type = CONTENT_TYPES[usize::from((first >> 3) & 3)];
    let mut headers = HeaderMap::new();
    if let Some(content_type) = content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if first & 0x20 != 0 {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
    }
    let rules = Rules {
        host: Some("login.example.com"),
        reauth_codes: &[],
        answered_resend_safe: first & 0x80 != 0,
        dpop: false,
    };
    let parsed = fields(&headers, body);
    let field = |name: &str| parsed.as_ref().and_then(|f| f.get(name));
    match read_device_authorization(status, &headers, body, &rules) {
        Ok(answer) => {
            assert!(status.is_success(), "{status}");
            assert!(!field("error").is_some_and(Value::is_string));
            let code = answer.device_code.secret();
            assert!(!code.is_empty() && !answer.user_code.is_empty());
            assert!(!answer.verification_uri.is_empty());
            for shown in [&answer.user_code, &answer.verification_uri] {
                assert!(!shown.chars().any(char::is_control), "{shown:?}");
            }
            assert!(answer.expires_in <= MAX_DEVICE_CODE_LIFETIME);
            assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&answer.interval));
            if field("interval").is_none_or(Value::is_null) {
                assert_eq!(answer.interval, DEFAULT_INTERVAL);
            }
            assert_eq!(
                format!("{:?}", answer.device_code),
                "DeviceCode([redacted])"
            );
        }
        Err(err) => {
            let _ = (err.to_string(), format!("{err:?}"));
        }
    }
    let answer = poll_answer(status, &headers, body, &rules);
    let code = field("error").and_then(Value::as_str);
    let expected = match code {
        Some("authorization_pending") => matches!(answer, PollAnswer::Pending),
        Some("slow_down") => matches!(answer, PollAnswer::SlowDown),
        Some("expired_token") => matches!(answer, PollAnswer::Expired),
        Some("access_denied") => matches!(answer, PollAnswer::Denied(_)),
        Some(_) => matches!(answer, PollAnswer::Failed(_)),
        None => true,
    };
    assert!(expected, "{code:?}: {answer:?}");
}
