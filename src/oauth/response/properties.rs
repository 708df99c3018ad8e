//! Property tests of the token response parser (RFC 6749 §5.1 and §5.2) and of the JWT `exp`
//! reader: generated answers read back to what was generated, errors land in their class, no
//! input panics, a refresh token that parsed is never lost, and no secret is ever printed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// The fields the parser reads; generated extra fields avoid these names.
const KNOWN: &[&str] = &[
    "access_token",
    "token_type",
    "expires_in",
    "refresh_token",
    "scope",
    "error",
    "error_description",
    "error_uri",
];

pub(super) const FORM: &str = "application/x-www-form-urlencoded";

/// A server-supplied string as an error message may show it: printable ASCII, at most `max`.
fn shown(value: &str, max: usize) -> String {
    value
        .chars()
        .filter(|c| (' '..='~').contains(c))
        .take(max)
        .collect()
}

pub(super) fn headers(content_type: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    }
    headers
}

/// A string that cannot be a JWT (no dot), so a missing `expires_in` stays unknown.
fn opaque() -> impl Strategy<Value = String> {
    r"[^.]{1,40}"
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Fields a server may add that this crate does not read.
fn extra_fields() -> impl Strategy<Value = BTreeMap<String, Value>> {
    prop::collection::btree_map(
        r"[a-z_]{1,14}".prop_filter("an unknown name", |n| !KNOWN.contains(&n.as_str())),
        json_value(),
        0..4,
    )
}

/// `expires_in` as a server may write it.
#[derive(Debug, Clone)]
pub(super) enum ExpiresIn {
    Absent,
    Null,
    Number(u64),
    /// Seconds with a fraction, as a few servers send.
    Float(f64),
    /// Digits in a string, perhaps padded with zeros and spaces.
    Digits(u64, usize, String),
    /// Something that is not a lifetime: the answer is still used, with no lifetime.
    Unreadable(Value),
}

impl ExpiresIn {
    /// The JSON value, and the lifetime the parser should read from it.
    pub(super) fn json(&self) -> (Option<Value>, Option<Duration>) {
        match self {
            ExpiresIn::Absent => (None, None),
            ExpiresIn::Null => (Some(Value::Null), None),
            ExpiresIn::Number(n) => (Some(json!(n)), Some(seconds(*n))),
            ExpiresIn::Float(f) => (Some(json!(f)), Some(seconds(f.trunc() as u64))),
            ExpiresIn::Digits(n, zeros, spaces) => {
                let text = format!("{spaces}{}{n}{spaces}", "0".repeat(*zeros));
                (Some(Value::String(text)), Some(seconds(*n)))
            }
            ExpiresIn::Unreadable(value) => (Some(value.clone()), None),
        }
    }

    /// The form field, and the lifetime the parser should read from it: only digits count.
    fn form(&self) -> (Option<String>, Option<Duration>) {
        match self.json() {
            (None | Some(Value::Null), _) => (None, None),
            (Some(Value::String(s)), lifetime) => (Some(s), lifetime),
            (Some(Value::Number(n)), _) => {
                let lifetime = n.as_u64().map(seconds);
                (Some(n.to_string()), lifetime)
            }
            (Some(other), _) => (Some(other.to_string()), None),
        }
    }
}

/// A lifetime as the parser reads it: cut to a year.
fn seconds(n: u64) -> Duration {
    Duration::from_secs(n).min(MAX_LIFETIME)
}

fn expires_in() -> impl Strategy<Value = ExpiresIn> {
    prop_oneof![
        Just(ExpiresIn::Absent),
        Just(ExpiresIn::Null),
        any::<u64>().prop_map(ExpiresIn::Number),
        (0u64..100_000).prop_map(ExpiresIn::Number),
        (0.0f64..1e9).prop_map(ExpiresIn::Float),
        (any::<u64>(), 0usize..3, "[ ]{0,2}")
            .prop_map(|(n, zeros, spaces)| ExpiresIn::Digits(n, zeros, spaces)),
        prop_oneof![
            Just(json!(-1)),
            Just(json!(-0.5)),
            Just(json!("soon")),
            Just(json!("")),
            Just(json!(true)),
            Just(json!([3600])),
            Just(json!({"seconds": 3600})),
        ]
        .prop_map(ExpiresIn::Unreadable),
    ]
}

/// An optional string field: absent, a string (empty counts as absent), or not a string.
fn optional_string() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        2 => ".{0,30}".prop_map(|s| Some(Value::String(s))),
        1 => json_value().prop_map(Some),
    ]
}

/// The string the parser should read from an optional field: a non-empty string only.
fn readable(field: &Option<Value>) -> Option<String> {
    match field {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// `Bearer`, in any case.
fn bearer() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), 6).prop_map(|upper| {
        "bearer"
            .chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

/// A §5.1 success answer.
#[derive(Debug, Clone)]
pub(super) struct Success {
    access_token: String,
    pub(super) token_type: Option<String>,
    pub(super) expires_in: ExpiresIn,
    refresh_token: Option<Value>,
    scope: Option<Value>,
    extra: BTreeMap<String, Value>,
    /// Sort keys that shuffle the fields as they are written.
    order: Vec<u32>,
    pub(super) status: u16,
}

pub(super) fn success() -> impl Strategy<Value = Success> {
    (
        opaque(),
        prop::option::of(bearer()),
        expires_in(),
        optional_string(),
        optional_string(),
        extra_fields(),
        prop::collection::vec(any::<u32>(), 16),
        prop_oneof![4 => Just(200u16), 1 => 200u16..300],
    )
        .prop_map(
            |(access_token, token_type, expires_in, refresh_token, scope, extra, order, status)| {
                Success {
                    access_token,
                    token_type,
                    expires_in,
                    refresh_token,
                    scope,
                    extra,
                    order,
                    status,
                }
            },
        )
}

impl Success {
    /// The fields as JSON values, in the generated order.
    fn fields(&self) -> Vec<(String, Value)> {
        let mut fields = vec![("access_token".to_owned(), json!(self.access_token))];
        if let Some(token_type) = &self.token_type {
            fields.push(("token_type".to_owned(), json!(token_type)));
        }
        if let (Some(value), _) = self.expires_in.json() {
            fields.push(("expires_in".to_owned(), value));
        }
        if let Some(value) = &self.refresh_token {
            fields.push(("refresh_token".to_owned(), value.clone()));
        }
        if let Some(value) = &self.scope {
            fields.push(("scope".to_owned(), value.clone()));
        }
        fields.extend(self.extra.clone());
        let mut keyed: Vec<_> = fields
            .into_iter()
            .enumerate()
            .map(|(i, field)| (self.order[i % self.order.len()], i, field))
            .collect();
        keyed.sort_by_key(|(key, i, _)| (*key, *i));
        keyed.into_iter().map(|(_, _, field)| field).collect()
    }

    /// The answer as a JSON object, written by hand so that the field order varies.
    pub(super) fn json_body(&self) -> String {
        let fields: Vec<String> = self
            .fields()
            .into_iter()
            .map(|(name, value)| format!("{}: {value}", json!(name)))
            .collect();
        format!("{{ {} }}", fields.join(",\n "))
    }

    /// The answer form-encoded: every value a string, `expires_in` one of digits or not read.
    fn form_body(&self) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.fields() {
            match (name.as_str(), value) {
                ("expires_in", _) => {
                    if let (Some(text), _) = self.expires_in.form() {
                        form.append_pair(&name, &text);
                    }
                }
                (_, Value::String(s)) => {
                    form.append_pair(&name, &s);
                }
                (_, Value::Null) if name != "access_token" => {}
                (_, other) => {
                    form.append_pair(&name, &other.to_string());
                }
            }
        }
        form.finish()
    }

    pub(super) fn check(&self, set: &TokenSet, lifetime: Option<Duration>, form: bool) {
        assert_eq!(set.access_token.secret(), self.access_token);
        assert_eq!(set.expires_in, lifetime);
        let as_form = |field: &Option<Value>| match field {
            Some(Value::Null) | None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let (refresh_token, scope) = if form {
            (
                as_form(&self.refresh_token).filter(|s| !s.is_empty()),
                as_form(&self.scope).filter(|s| !s.is_empty()),
            )
        } else {
            (readable(&self.refresh_token), readable(&self.scope))
        };
        assert_eq!(
            set.refresh_token.as_ref().map(RefreshToken::secret),
            refresh_token.as_deref()
        );
        assert_eq!(set.scope, scope);
    }
}

const RULES: Rules<'static> = Rules {
    host: Some("login.example.com"),
    reauth_codes: &[],
    answered_resend_safe: false,
    dpop: false,
};

fn parse(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    rules: &Rules<'_>,
) -> Result<TokenSet, RefreshError> {
    let status = StatusCode::from_u16(status).unwrap();
    token_set(status, &headers(content_type), body, rules)
}

/// A §5.2 error answer.
#[derive(Debug, Clone)]
struct ErrorAnswer {
    code: String,
    description: Option<String>,
    uri: Option<String>,
    refresh_token: Option<String>,
    access_token: Option<String>,
    status: u16,
    /// Whether the grant counts `consent_required` as a reason to sign in again.
    consent_is_reauth: bool,
    resend_safe: bool,
    form: bool,
}

fn error_answer() -> impl Strategy<Value = ErrorAnswer> {
    let code = prop_oneof![
        3 => prop::sample::select(&[
            "invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope",
            "invalid_request", "unsupported_grant_type", "temporarily_unavailable",
            "server_error", "consent_required", "slow_down", "INVALID_GRANT",
        ][..])
        .prop_map(str::to_owned),
        1 => ".{0,20}",
        // Control characters are dropped from the code: this one still means invalid_grant.
        1 => Just("invalid\u{7}_grant\n".to_owned()),
    ];
    let status = prop_oneof![
        Just(200u16),
        Just(400u16),
        Just(401u16),
        Just(429u16),
        Just(500u16),
        Just(503u16),
        100u16..600,
    ];
    (
        code,
        prop::option::of(".{0,40}"),
        prop::option::of(".{0,40}"),
        prop::option::of(".{0,20}"),
        prop::option::of(opaque()),
        status,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                code,
                description,
                uri,
                refresh_token,
                access_token,
                status,
                consent_is_reauth,
                resend_safe,
                form,
            )| ErrorAnswer {
                code,
                description,
                uri,
                refresh_token,
                access_token,
                status,
                consent_is_reauth,
                resend_safe,
                form,
            },
        )
}

impl ErrorAnswer {
    fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut fields = vec![("error", self.code.as_str())];
        let optional = [
            ("error_description", &self.description),
            ("error_uri", &self.uri),
            ("refresh_token", &self.refresh_token),
            ("access_token", &self.access_token),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                fields.push((name, value.as_str()));
            }
        }
        fields
    }

    fn body(&self) -> (Option<&'static str>, Vec<u8>) {
        if self.form {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.extend_pairs(self.fields());
            (Some(FORM), form.finish().into_bytes())
        } else {
            let object: serde_json::Map<_, _> = self
                .fields()
                .into_iter()
                .map(|(n, v)| (n.to_owned(), json!(v)))
                .collect();
            (
                Some("application/json"),
                Value::Object(object).to_string().into_bytes(),
            )
        }
    }
}

/// A random secret-looking token, which no message may ever show.
pub(super) fn secret(prefix: &'static str) -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{20,32}".prop_map(move |s| format!("{prefix}{s}"))
}

/// Everything an error can print: Display and Debug, down its source chain.
fn printed(result: &Result<TokenSet, RefreshError>) -> String {
    let mut out = format!("{result:?}");
    if let Err(err) = result {
        let mut source: Option<&dyn std::error::Error> = Some(err);
        while let Some(err) = source {
            out.push_str(&format!("\n{err}\n{err:?}"));
            source = err.source();
        }
    }
    out
}

/// A JWT with these claims, its payload in base64url with or without padding.
fn jwt(claims: &Value, padded: bool, header: &[u8], signature: &str) -> String {
    let payload = claims.to_string();
    let payload = if padded {
        URL_SAFE.encode(payload)
    } else {
        URL_SAFE_NO_PAD.encode(payload)
    };
    format!("{}.{payload}.{signature}", URL_SAFE_NO_PAD.encode(header))
}

fn at(seconds: u64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A §5.1 success written as JSON (any content type) reads back field for field.
    #[test]
    fn json_success_reads_back(
        answer in success(),
        content_type in prop::option::of(prop::sample::select(&[
            "application/json", "application/json; charset=utf-8", "text/plain", FORM,
        ][..])),
    ) {
        let body = answer.json_body();
        let set = parse(answer.status, content_type, body.as_bytes(), &RULES)
            .unwrap_or_else(|err| panic!("{body}: {err:?}"));
        answer.check(&set, answer.expires_in.json().1, false);
    }

    /// The same answer form-encoded, with a form content type, reads back too.
    #[test]
    fn form_success_reads_back(
        answer in success(),
        content_type in prop::sample::select(&[FORM, "application/x-www-form-urlencoded; charset=UTF-8"][..]),
    ) {
        let body = answer.form_body();
        let set = parse(answer.status, Some(content_type), body.as_bytes(), &RULES)
            .unwrap_or_else(|err| panic!("{body}: {err:?}"));
        answer.check(&set, answer.expires_in.form().1, true);
    }

    /// A §5.2 error, whatever the status (200 included), lands in its class with its fields,
    /// and a transient one keeps the refresh token the body carried.
    #[test]
    fn error_answers_land_in_their_class(answer in error_answer()) {
        let reauth_codes = [String::from("consent_required")];
        let rules = Rules {
            host: Some("login.example.com"),
            reauth_codes: if answer.consent_is_reauth { &reauth_codes } else { &[] },
            answered_resend_safe: answer.resend_safe,
            dpop: false,
        };
        let (content_type, body) = answer.body();
        let err = parse(answer.status, content_type, &body, &rules)
            .expect_err("an error answer is an error");
        let code = shown(&answer.code, 64);
        let description = answer.description.as_deref().map(|d| shown(d, 300));
        let reauth = code == "invalid_grant"
            || (answer.consent_is_reauth && code == "consent_required");
        let transient = match (code.as_str(), answer.status) {
            _ if reauth => None,
            ("temporarily_unavailable", _) => Some(TransientKind::TemporarilyUnavailable),
            ("server_error", status) => Some(TransientKind::ServerError(status)),
            (_, 429) => Some(TransientKind::RateLimited),
            (_, status @ 500..=599) => Some(TransientKind::ServerError(status)),
            _ => None,
        };
        match &err {
            RefreshError::Reauth(err) => {
                prop_assert!(reauth, "{:?}", err);
                prop_assert_eq!(err.error(), code);
                prop_assert_eq!(err.description(), description.as_deref());
                let uri = answer.uri.as_deref().map(|u| shown(u, 300));
                prop_assert_eq!(err.uri(), uri.as_deref());
                prop_assert_eq!(err.host(), Some("login.example.com"));
            }
            RefreshError::Transient(err) => {
                prop_assert_eq!(Some(err.kind()), transient);
                prop_assert_eq!(err.is_resend_safe(), answer.resend_safe);
                let refresh_token = answer.refresh_token.as_deref().filter(|t| !t.is_empty());
                prop_assert_eq!(err.received_refresh_token().map(RefreshToken::secret), refresh_token);
            }
            RefreshError::Configuration(err) => {
                prop_assert!(!reauth && transient.is_none(), "{:?}", err);
                prop_assert_eq!(err.error(), code);
                prop_assert_eq!(err.description(), description.as_deref());
            }
        }
    }
}

/// A body of the fields the parser reads, with values of any type, as JSON or as a form.
fn field_soup() -> impl Strategy<Value = (Option<&'static str>, Vec<u8>)> {
    let name = prop_oneof![
        3 => prop::sample::select(KNOWN).prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ];
    let value = prop_oneof![
        2 => ".{0,16}".prop_map(Value::String),
        1 => json_value(),
    ];
    let fields = prop::collection::vec((name, value), 0..8);
    (fields, any::<bool>(), any::<prop::sample::Index>(), 0..3u8).prop_map(
        |(fields, form, cut, damage)| {
            let (content_type, mut body) = if form {
                let mut serializer = url::form_urlencoded::Serializer::new(String::new());
                for (name, value) in &fields {
                    match value {
                        Value::String(s) => serializer.append_pair(name, s),
                        other => serializer.append_pair(name, &other.to_string()),
                    };
                }
                (Some(FORM), serializer.finish().into_bytes())
            } else {
                let object: serde_json::Map<_, _> = fields.into_iter().collect();
                (
                    Some("application/json"),
                    Value::Object(object).to_string().into_bytes(),
                )
            };
            // Sometimes cut the body short, as a broken connection would.
            if damage == 0 {
                body.truncate(cut.index(body.len() + 1));
            }
            (content_type, body)
        },
    )
}

/// Any body: arbitrary bytes, or fields of any type, whole or cut short.
pub(super) fn any_body() -> impl Strategy<Value = (Option<&'static str>, Vec<u8>)> {
    let content_type = prop::option::of(prop::sample::select(
        &[
            "application/json",
            FORM,
            "text/html",
            "application/x-www-form-urlencodedX",
        ][..],
    ));
    prop_oneof![
        1 => (content_type, prop::collection::vec(any::<u8>(), 0..128)),
        3 => field_soup(),
    ]
}

/// The refresh token a body carries, read the way RFC 6749 writes it: a non-empty string in
/// a JSON object, or a form field when the content type says form.
pub(super) fn refresh_token_in(content_type: Option<&str>, body: &[u8]) -> (Option<String>, bool) {
    if let Ok(Value::Object(fields)) = serde_json::from_slice(body) {
        let error = fields.get("error").is_some_and(Value::is_string);
        return (readable(&fields.get("refresh_token").cloned()), error);
    }
    if content_type.is_some_and(|c| c.starts_with(FORM)) {
        let fields: BTreeMap<_, _> = url::form_urlencoded::parse(body).collect();
        let refresh_token = fields.get("refresh_token").filter(|t| !t.is_empty());
        return (
            refresh_token.map(|t| t.to_string()),
            fields.contains_key("error"),
        );
    }
    (None, false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Any answer: no panic, and a refresh token that parsed is in the token set or in the
    /// transient error. Only a §5.2 error that needs a sign-in or a new configuration has no
    /// place for one, and only a body with an `error` string gives such an error, or a
    /// redirect without a refresh token.
    #[test]
    fn any_answer_keeps_a_parsed_refresh_token(
        (content_type, body) in any_body(),
        status in 100u16..1000,
        retry_after in prop::option::of(r"[ -~]{0,30}"),
    ) {
        let mut headers = headers(content_type);
        if let Some(retry_after) = retry_after {
            headers.insert(header::RETRY_AFTER, retry_after.parse().unwrap());
        }
        let status = StatusCode::from_u16(status).unwrap();
        let result = token_set(status, &headers, &body, &RULES);
        let (refresh_token, error) = refresh_token_in(content_type, &body);
        match &result {
            Ok(set) => {
                prop_assert!(status.is_success() && !error);
                prop_assert!(!set.access_token.secret().is_empty());
                prop_assert_eq!(set.refresh_token.as_ref().map(RefreshToken::secret), refresh_token.as_deref());
            }
            Err(RefreshError::Transient(err)) => {
                prop_assert_eq!(err.received_refresh_token().map(RefreshToken::secret), refresh_token.as_deref());
            }
            // A redirect is a wrong token URL, whatever the body, unless it carried a
            // refresh token, which the transient error then keeps.
            Err(RefreshError::Configuration(err)) if err.error() == "token_endpoint_redirect" => {
                prop_assert!(status.is_redirection() && refresh_token.is_none(), "{:?}", err);
            }
            Err(err) => prop_assert!(error, "{:?} without an error field", err),
        }
        let _ = printed(&result);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// No access or refresh token from the body ever shows in what an outcome prints.
    #[test]
    fn secrets_never_show_in_messages(
        access_token in secret("AT"),
        refresh_token in secret("RT"),
        shape in 0..5u8,
        status in 100u16..600,
        code in prop::sample::select(&["invalid_grant", "invalid_client", "server_error", "slow_down"][..]),
        token_type in prop::sample::select(&["mac", "DPoP", "N_A"][..]),
        form in any::<bool>(),
    ) {
        let fields = match shape {
            // A usable answer, perhaps with a status that makes it unusable.
            0 => vec![("access_token", access_token.as_str()), ("refresh_token", refresh_token.as_str()), ("token_type", "Bearer")],
            // A token type this crate cannot use.
            1 => vec![("access_token", access_token.as_str()), ("refresh_token", refresh_token.as_str()), ("token_type", token_type)],
            // An error that carries tokens all the same.
            2 => vec![("error", code), ("error_description", "nope"), ("access_token", access_token.as_str()), ("refresh_token", refresh_token.as_str())],
            // No access token, and the secret under another name.
            _ => vec![("token", access_token.as_str()), ("refresh_token", refresh_token.as_str()), ("expires_in", "soon")],
        };
        let (content_type, body) = if form {
            let mut serializer = url::form_urlencoded::Serializer::new(String::new());
            serializer.extend_pairs(fields);
            (FORM, serializer.finish())
        } else {
            let object: serde_json::Map<_, _> = fields.into_iter().map(|(n, v)| (n.to_owned(), json!(v))).collect();
            ("application/json", Value::Object(object).to_string())
        };
        let bodies = [
            body.clone(),
            // Cut short, and not JSON at all.
            body[..body.len() / 2].to_owned(),
            format!("<html><p>{access_token}</p><p>{refresh_token}</p></html>"),
        ];
        for body in bodies {
            let result = parse(status, Some(content_type), body.as_bytes(), &RULES);
            let printed = printed(&result);
            prop_assert!(!printed.contains(&access_token), "{}", printed);
            prop_assert!(!printed.contains(&refresh_token), "{}", printed);
            // Nor a part of one, in case a message cut it short.
            prop_assert!(!printed.contains(&access_token[2..18]), "{}", printed);
            prop_assert!(!printed.contains(&refresh_token[2..18]), "{}", printed);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// `exp - now`, zero once past, for a payload padded or not, with other claims around.
    #[test]
    fn jwt_lifetime_is_exp_minus_now(
        exp in prop_oneof![0u64..4_000_000_000, any::<u32>().prop_map(u64::from), 0u64..1 << 40],
        now_seconds in 0u64..4_000_000_000,
        now_nanos in 0u32..1_000_000_000,
        claims in extra_fields(),
        padded in any::<bool>(),
        header in prop::collection::vec(any::<u8>(), 0..24),
        signature in "[A-Za-z0-9_-]{0,40}",
    ) {
        let mut claims: serde_json::Map<_, _> = claims.into_iter().collect();
        claims.insert("exp".to_owned(), json!(exp));
        let token = jwt(&Value::Object(claims), padded, &header, &signature);
        let now = at(now_seconds, now_nanos);
        let expected = Duration::from_secs(exp)
            .checked_sub(Duration::new(now_seconds, now_nanos))
            .unwrap_or(Duration::ZERO)
            .min(MAX_LIFETIME);
        prop_assert_eq!(jwt_lifetime(&token, now), Some(expected), "{}", token);
    }

    /// An `exp` with a fraction counts its whole seconds; a negative one is long past.
    #[test]
    fn jwt_lifetime_of_a_fractional_or_negative_exp(
        exp in -1e10f64..1e10,
        now_seconds in 0u64..4_000_000_000,
    ) {
        let token = jwt(&json!({"exp": exp, "sub": "x"}), false, b"{}", "sig");
        let whole = if exp > 0.0 { exp.trunc() as u64 } else { 0 };
        let expected = seconds(whole.saturating_sub(now_seconds));
        prop_assert_eq!(jwt_lifetime(&token, at(now_seconds, 0)), Some(expected));
    }

    /// No number `exp`, or not three parts: no lifetime.
    #[test]
    fn jwt_without_a_readable_exp_has_no_lifetime(
        exp in prop::option::of(json_value().prop_filter("not a number", |v| !v.is_number())),
        exp_value in any::<u64>(),
        dots in prop::sample::select(&[0usize, 1, 3, 4][..]),
    ) {
        let now = at(1_700_000_000, 0);
        let claims = match &exp {
            Some(exp) => json!({"exp": exp}),
            None => json!({"sub": "x"}),
        };
        prop_assert_eq!(jwt_lifetime(&jwt(&claims, false, b"{}", "sig"), now), None);
        // A readable exp in a token of the wrong shape.
        let payload = URL_SAFE_NO_PAD.encode(json!({"exp": exp_value}).to_string());
        let parts = vec![payload.as_str(); dots + 1];
        prop_assert_eq!(jwt_lifetime(&parts.join("."), now), None);
    }

    /// Arbitrary strings, and three parts of base64url-ish text, never panic; a lifetime only
    /// comes from a token of exactly three parts.
    #[test]
    fn jwt_lifetime_of_any_string(
        text in any::<String>(),
        parts in prop::collection::vec("[A-Za-z0-9_=+/-]{0,24}", 3),
        payload in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let now = at(1_700_000_000, 0);
        let padded = format!("{}.{}.{}", parts[0], URL_SAFE.encode(&payload), parts[2]);
        for token in [text, parts.join("."), padded] {
            if jwt_lifetime(&token, now).is_some() {
                prop_assert_eq!(token.matches('.').count(), 2);
            }
        }
    }
}
