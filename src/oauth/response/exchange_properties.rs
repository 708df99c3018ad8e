//! Property tests of the token exchange answer (RFC 8693 §2.2): the plain parser's properties
//! hold for it, plus what it adds: `issued_token_type` is required and returned as sent, an
//! issued refresh token is never taken for an access token, `N_A` only when accepted, and
//! error answers land where the plain parser puts them.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::properties::{FORM, any_body, headers, refresh_token_in, secret, success};

/// The fields an exchange's answer is read for.
const FIELDS: &[&str] = &[
    "access_token",
    "token_type",
    "issued_token_type",
    "expires_in",
    "refresh_token",
    "scope",
    "error",
    "error_description",
];

/// A body of those fields, with the values that matter to an exchange among others, as JSON
/// or as a form; or any body the plain parser's properties use.
fn exchange_body() -> impl Strategy<Value = (Option<&'static str>, Vec<u8>)> {
    let value = prop_oneof![
        2 => prop::sample::select(&[
            "N_A", "Bearer", "bearer", "DPoP", "at-1", "rt-1", "3600", "invalid_grant",
            "urn:ietf:params:oauth:token-type:access_token",
            "urn:ietf:params:oauth:token-type:refresh_token",
            "urn:ietf:params:oauth:token-type:id_token",
        ][..]).prop_map(|v| Value::String(v.to_owned())),
        1 => ".{0,12}".prop_map(Value::String),
        1 => prop_oneof![Just(Value::Null), any::<u32>().prop_map(Value::from), any::<bool>().prop_map(Value::Bool)],
    ];
    let fields = prop::collection::vec((prop::sample::select(FIELDS), value), 0..8);
    let soup = (fields, any::<bool>()).prop_map(|(fields, form)| {
        if form {
            let mut serializer = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in &fields {
                match value {
                    Value::String(s) => serializer.append_pair(name, s),
                    other => serializer.append_pair(name, &other.to_string()),
                };
            }
            (Some(FORM), serializer.finish().into_bytes())
        } else {
            let object: serde_json::Map<_, _> =
                fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
            (
                Some("application/json"),
                Value::Object(object).to_string().into_bytes(),
            )
        }
    });
    prop_oneof![3 => soup, 1 => any_body()]
}
use super::*;

const RULES: Rules<'static> = Rules {
    host: Some("login.example.com"),
    reauth_codes: &[],
    answered_resend_safe: true,
    dpop: false,
};

/// Token type URIs a server may name, the refresh token's among them.
fn issued_type() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&[
            "urn:ietf:params:oauth:token-type:access_token",
            "urn:ietf:params:oauth:token-type:jwt",
            "urn:ietf:params:oauth:token-type:id_token",
            "urn:ietf:params:oauth:token-type:saml2",
        ][..]).prop_map(str::to_owned),
        1 => "[ -~]{1,40}",
    ]
}

fn exchange(
    status: StatusCode,
    content_type: Option<&str>,
    body: &[u8],
    accept: bool,
) -> Result<(TokenSet, String), RefreshError> {
    exchanged_token_set(status, &headers(content_type), body, &RULES, accept)
}

/// The `issued_token_type` and `token_type` a body carries, read as the parser does.
fn named_types(content_type: Option<&str>, body: &[u8]) -> (Option<String>, Option<String>) {
    let fields: Option<serde_json::Map<String, Value>> = match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Some(fields),
        _ if content_type.is_some_and(|c| c.starts_with(FORM)) => Some(
            url::form_urlencoded::parse(body)
                .map(|(n, v)| (n.into_owned(), Value::String(v.into_owned())))
                .collect(),
        ),
        _ => None,
    };
    let Some(fields) = fields else {
        return (None, None);
    };
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let token_type = fields
        .get("token_type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    (text("issued_token_type"), token_type)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// A success with an `issued_token_type` reads back as the plain parser reads it, with
    /// the type as sent; `N_A` reads back only when accepted, and is a configuration error
    /// otherwise, as is an issued refresh token whatever is accepted.
    #[test]
    fn exchange_success_reads_back(
        answer in success(),
        issued in issued_type(),
        not_an_access_token in any::<bool>(),
        accept in any::<bool>(),
        refresh_type in prop::bool::weighted(0.1),
    ) {
        let issued = match refresh_type {
            true => REFRESH_TOKEN_TYPE.to_owned(),
            false => issued,
        };
        let Value::Object(mut fields) = serde_json::from_str::<Value>(&answer.json_body()).unwrap() else {
            unreachable!()
        };
        fields.insert("issued_token_type".into(), json!(issued));
        if not_an_access_token {
            fields.insert("token_type".into(), json!("N_A"));
        }
        let body = Value::Object(fields).to_string();
        let status = StatusCode::from_u16(answer.status).unwrap();
        let result = exchange(status, Some("application/json"), body.as_bytes(), accept);
        if refresh_type || (not_an_access_token && !accept) {
            let Err(RefreshError::Configuration(err)) = &result else {
                panic!("{body}: {result:?}")
            };
            prop_assert_eq!(err.error(), "not_an_access_token");
        } else {
            let (set, read) = result.unwrap_or_else(|err| panic!("{body}: {err:?}"));
            prop_assert_eq!(read, issued);
            answer.check(&set, answer.expires_in.json().1, false);
        }
    }

    /// Any answer: no panic; what the plain parser refuses, the exchange refuses in the same
    /// class (an error answer with the same code); a success names a usable
    /// `issued_token_type`; a refresh token that parsed is in the token set or the transient
    /// error, unless the answer is refused outright.
    #[test]
    fn any_exchange_answer_is_a_plain_answer_with_an_issued_token_type(
        (content_type, body) in exchange_body(),
        status in prop_oneof![3 => Just(200u16), 1 => 100u16..600],
        accept in any::<bool>(),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let plain = token_set(status, &headers(content_type), &body, &RULES);
        let exchanged = exchange(status, content_type, &body, accept);
        let (refresh_token, error) = refresh_token_in(content_type, &body);
        let (issued, token_type) = named_types(content_type, &body);
        let n_a = token_type.as_deref() == Some("N_A");
        match (&plain, &exchanged) {
            (Err(plain), Err(exchanged)) => {
                // The plain parser refuses N_A, which an exchange may accept: only then may
                // the classes differ.
                if !n_a {
                    prop_assert_eq!(plain.kind(), exchanged.kind());
                }
            }
            (Err(plain), Ok(_)) => prop_assert!(n_a && accept, "{:?}", plain),
            (Ok(_), Err(RefreshError::Transient(err))) => {
                prop_assert!(issued.is_none(), "{:?}", err);
            }
            (Ok(_), Err(RefreshError::Configuration(err))) => {
                prop_assert_eq!(err.error(), "not_an_access_token");
            }
            (Ok(_), Err(err)) => prop_assert!(false, "{:?}", err),
            (Ok(plain), Ok((set, read))) => {
                prop_assert_eq!(plain.access_token.secret(), set.access_token.secret());
                prop_assert_eq!(Some(read), issued.as_ref());
            }
        }
        match &exchanged {
            Ok((set, read)) => {
                prop_assert!(status.is_success() && !error);
                prop_assert!(!read.is_empty() && read != REFRESH_TOKEN_TYPE);
                prop_assert_eq!(set.refresh_token.as_ref().map(RefreshToken::secret), refresh_token.as_deref());
            }
            Err(RefreshError::Transient(err)) => {
                prop_assert_eq!(err.received_refresh_token().map(RefreshToken::secret), refresh_token.as_deref());
                prop_assert!(err.is_resend_safe());
            }
            Err(RefreshError::Configuration(err))
                if err.error() == "not_an_access_token" || err.error() == "token_endpoint_redirect" => {}
            Err(err) => prop_assert!(error, "{:?} without an error field", err),
        }
    }

    /// No access or refresh token from an exchange's answer ever shows in what its outcome
    /// prints, the refusals of what is not an access token included.
    #[test]
    fn exchange_secrets_never_show_in_messages(
        access_token in secret("AT"),
        refresh_token in secret("RT"),
        token_type in prop::sample::select(&["Bearer", "N_A", "DPoP"][..]),
        issued in prop_oneof![issued_type().prop_map(Some), Just(Some(REFRESH_TOKEN_TYPE.to_owned())), Just(None)],
        status in prop::sample::select(&[200u16, 400, 503][..]),
        accept in any::<bool>(),
    ) {
        let mut body = json!({"access_token": access_token, "refresh_token": refresh_token, "token_type": token_type});
        if let Some(issued) = issued {
            body["issued_token_type"] = json!(issued);
        }
        let body = body.to_string();
        let status = StatusCode::from_u16(status).unwrap();
        let result = exchange(status, Some("application/json"), body.as_bytes(), accept);
        let mut printed = format!("{result:?}");
        if let Err(err) = &result {
            let mut source: Option<&dyn std::error::Error> = Some(err);
            while let Some(err) = source {
                printed.push_str(&format!("\n{err}\n{err:?}"));
                source = err.source();
            }
        }
        if let Ok((set, _)) = &result {
            // What a success holds is redacted too.
            printed = format!("{set:?}");
        }
        prop_assert!(!printed.contains(&access_token[2..18]), "{}", printed);
        prop_assert!(!printed.contains(&refresh_token[2..18]), "{}", printed);
    }
}
