//! Property tests of the device authorization answer reader (RFC 8628 §3.2) and of the poll
//! answer reader (§3.5): generated answers read back to what was generated with their numbers
//! cut to the bounds, any input is survived, only a success with every required field is
//! read, and the device code never shows in a message.

use http::header;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const RULES: Rules<'static> = Rules {
    host: Some("login.example.com"),
    reauth_codes: &[],
    answered_resend_safe: true,
    dpop: false,
};

fn headers(content_type: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    }
    headers
}

/// A number as a server may write one: a JSON number, a float, or digits in a string.
fn number() -> impl Strategy<Value = (Value, u64)> {
    prop_oneof![
        any::<u64>().prop_map(|n| (json!(n), n)),
        (0u64..100_000).prop_map(|n| (json!(n), n)),
        (0u64..100_000).prop_map(|n| (json!(n as f64 + 0.25), n)),
        (0u64..100_000, 0usize..3)
            .prop_map(|(n, zeros)| (Value::String(format!(" {}{n} ", "0".repeat(zeros))), n)),
    ]
}

/// Text a user may be shown: printable, no control characters.
fn shown() -> impl Strategy<Value = String> {
    r"[A-Za-z0-9 ./:?=&_-]{1,40}".prop_filter("not blank", |s| !s.is_empty())
}

#[derive(Debug, Clone)]
struct Answer {
    device_code: String,
    user_code: String,
    verification_uri: String,
    /// Sent as the older `verification_url`.
    legacy_name: bool,
    verification_uri_complete: Option<String>,
    expires_in: (Value, u64),
    interval: Option<(Value, u64)>,
    status: u16,
}

fn answer() -> impl Strategy<Value = Answer> {
    (
        "dc-s3cr3t-[A-Za-z0-9_-]{1,40}",
        shown(),
        shown(),
        any::<bool>(),
        prop::option::of(shown()),
        number(),
        prop::option::of(number()),
        prop::sample::select(vec![200u16, 201]),
    )
        .prop_map(
            |(
                device_code,
                user_code,
                verification_uri,
                legacy_name,
                verification_uri_complete,
                expires_in,
                interval,
                status,
            )| Answer {
                device_code,
                user_code,
                verification_uri,
                legacy_name,
                verification_uri_complete,
                expires_in,
                interval,
                status,
            },
        )
}

impl Answer {
    fn body(&self) -> Value {
        let uri_name = match self.legacy_name {
            true => "verification_url",
            false => "verification_uri",
        };
        let mut body = json!({
            "device_code": self.device_code,
            "user_code": self.user_code,
            uri_name: self.verification_uri,
            "expires_in": self.expires_in.0,
        });
        if let Some(complete) = &self.verification_uri_complete {
            body["verification_uri_complete"] = json!(complete);
        }
        if let Some((interval, _)) = &self.interval {
            body["interval"] = interval.clone();
        }
        body
    }
}

/// Bodies of any shape: JSON objects mixing the answer's fields with junk, or bytes.
fn any_body() -> impl Strategy<Value = (u16, Option<&'static str>, Vec<u8>)> {
    let field = prop_oneof![
        Just("device_code"),
        Just("user_code"),
        Just("verification_uri"),
        Just("verification_uri_complete"),
        Just("expires_in"),
        Just("interval"),
        Just("error"),
        Just("access_token"),
        Just("other"),
    ];
    let value = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(json!(["a"])),
        Just(json!({"a": 1})),
    ];
    let json_body = prop::collection::btree_map(field, value, 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
        .prop_map(|v| v.to_string().into_bytes());
    let bytes = prop::collection::vec(any::<u8>(), 0..200);
    (
        prop::sample::select(vec![200u16, 201, 204, 302, 400, 401, 429, 500, 503]),
        prop::sample::select(vec![
            Some("application/json"),
            Some("application/x-www-form-urlencoded"),
            Some("text/html"),
            None,
        ]),
        prop_oneof![json_body, bytes],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_generated_answer_reads_back_with_its_numbers_cut_to_bounds(answer in answer()) {
        let body = answer.body().to_string();
        let read = device_authorization(
            StatusCode::from_u16(answer.status).unwrap(),
            &headers(Some("application/json")),
            body.as_bytes(),
            &RULES,
        )
        .unwrap_or_else(|err| panic!("{body}: {err:?}"));
        prop_assert_eq!(read.device_code.secret(), answer.device_code.as_str());
        prop_assert_eq!(&read.user_code, &answer.user_code);
        prop_assert_eq!(&read.verification_uri, &answer.verification_uri);
        prop_assert_eq!(&read.verification_uri_complete, &answer.verification_uri_complete);
        let expires_in = Duration::from_secs(answer.expires_in.1).min(MAX_DEVICE_CODE_LIFETIME);
        prop_assert_eq!(read.expires_in, expires_in);
        let interval = answer
            .interval
            .map_or(DEFAULT_INTERVAL, |(_, n)| Duration::from_secs(n).clamp(MIN_INTERVAL, MAX_INTERVAL));
        prop_assert_eq!(read.interval, interval);
        let printed = format!("{read:?}");
        prop_assert!(!printed.contains("s3cr3t"), "{}", printed);
    }

    #[test]
    fn an_error_answer_is_never_read_and_never_quotes_the_body(
        answer in answer(),
        code in prop::sample::select(vec!["invalid_client", "invalid_scope", "access_denied", "slow_down", "server_error"]),
        status in prop::sample::select(vec![200u16, 400, 401, 500]),
    ) {
        let mut body = answer.body();
        body["error"] = json!(code);
        let body = body.to_string();
        let err = device_authorization(
            StatusCode::from_u16(status).unwrap(),
            &headers(Some("application/json")),
            body.as_bytes(),
            &RULES,
        )
        .unwrap_err();
        let printed = format!("{err} {err:?} {:?}", err.source().map(ToString::to_string));
        prop_assert!(!printed.contains("s3cr3t"), "{}", printed);
    }

    #[test]
    fn any_answer_is_survived_and_only_a_complete_success_is_read(
        (status, content_type, body) in any_body()
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let headers = headers(content_type);
        let result = device_authorization(status, &headers, &body, &RULES);
        let _ = format!("{result:?}");
        if let Ok(read) = &result {
            prop_assert!(status.is_success());
            prop_assert!(!read.device_code.secret().is_empty());
            prop_assert!(!read.user_code.is_empty() && !read.verification_uri.is_empty());
            prop_assert!(read.expires_in <= MAX_DEVICE_CODE_LIFETIME);
            prop_assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&read.interval));
            let fields = response::fields(&headers, &body).unwrap();
            prop_assert!(!fields.get("error").is_some_and(Value::is_string));
        }
        // The poll reader survives the same bytes.
        let _ = format!("{:?}", poll_answer(status, &headers, &body, &RULES));
    }

    #[test]
    fn poll_answers_follow_their_error_code(
        code in prop::sample::select(vec![
            "authorization_pending", "slow_down", "access_denied", "expired_token",
            "invalid_grant", "invalid_client", "server_error",
        ]),
        status in prop::sample::select(vec![200u16, 400, 401, 503]),
        description in ".{0,40}",
    ) {
        let body = json!({"error": code, "error_description": description}).to_string();
        let answer = poll_answer(
            StatusCode::from_u16(status).unwrap(),
            &headers(Some("application/json")),
            body.as_bytes(),
            &RULES,
        );
        let expected = match code {
            "authorization_pending" => matches!(answer, PollAnswer::Pending),
            "slow_down" => matches!(answer, PollAnswer::SlowDown),
            "expired_token" => matches!(answer, PollAnswer::Expired),
            "access_denied" => matches!(
                &answer,
                PollAnswer::Denied(Some(d)) if d.chars().all(|c| c.is_ascii() && !c.is_ascii_control())
            ),
            "invalid_grant" => matches!(answer, PollAnswer::Failed(RefreshError::Reauth(_))),
            // As a token endpoint's answer: a client error, unless the server failed (5xx).
            "invalid_client" if status >= 500 => matches!(answer, PollAnswer::Failed(RefreshError::Transient(_))),
            "invalid_client" => matches!(answer, PollAnswer::Failed(RefreshError::Configuration(_))),
            _ => matches!(answer, PollAnswer::Failed(RefreshError::Transient(_))),
        };
        prop_assert!(expected, "{} {}: {:?}", status, code, answer);
    }
}
