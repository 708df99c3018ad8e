//! Property tests of the `WWW-Authenticate` parser: challenges rendered per RFC 9110 §11.6.1
//! parse back to what was rendered, and no input makes it panic or yield a malformed part.

use std::cell::Cell;

use http::HeaderValue;
use http::header::WWW_AUTHENTICATE;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;

/// A challenge as the generator meant it, and as the parser should give it back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    scheme: String,
    token68: Option<String>,
    params: Vec<(String, String)>,
}

impl Model {
    fn of(challenge: &Challenge<'_>) -> Model {
        Model {
            scheme: challenge.scheme().to_owned(),
            token68: challenge.token68().map(str::to_owned),
            params: challenge
                .params()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

fn parsed(value: &str) -> Vec<Model> {
    parse_challenges(value).iter().map(Model::of).collect()
}

/// A `token` (RFC 9110 §5.6.2), often one of the names that matter here.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}",
        1 => prop::sample::select(&[
            "Bearer", "bearer", "BEARER", "Basic", "Negotiate", "DPoP", "realm", "error",
            "error_description", "scope", "invalid_token", "insufficient_scope",
        ][..])
        .prop_map(str::to_owned),
    ]
}

/// Optional whitespace; tabs too, which the parser accepts as RFC 7230 did.
fn ows() -> impl Strategy<Value = String> {
    r"[ \t]{0,2}"
}

/// A list separator: a comma with optional whitespace, sometimes with empty elements (`, ,`).
fn separator() -> impl Strategy<Value = String> {
    r"[ \t]{0,2},([ \t]{0,2},){0,2}[ \t]{0,2}"
}

/// A char of a quoted-string's content: the awkward ASCII ones often, any non-control char
/// (obs-text, which is UTF-8 here) sometimes.
fn quoted_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(&['"', '\\', ',', '=', ' ', '\t', 'a', 'Z', '0', ';', '\''][..]),
        2 => (0x20u8..0x7f).prop_map(char::from),
        1 => any::<char>().prop_filter("no ASCII control", |c| !c.is_ascii_control()),
    ]
}

/// A quoted-string: the value it stands for and how it is written. `"` and `\` are always
/// escaped; any other char is escaped sometimes, which a quoted-pair allows.
fn quoted_string() -> impl Strategy<Value = (String, String)> {
    prop::collection::vec((quoted_char(), any::<bool>()), 0..12).prop_map(|chars| {
        let mut rendered = String::from("\"");
        let mut value = String::new();
        for (c, escape) in chars {
            if escape || c == '"' || c == '\\' {
                rendered.push('\\');
            }
            rendered.push(c);
            value.push(c);
        }
        rendered.push('"');
        (value, rendered)
    })
}

/// An auth-param: its name, its value and how it is written, with whitespace around `=`.
fn auth_param() -> impl Strategy<Value = ((String, String), String)> {
    let value = prop_oneof![
        token().prop_map(|t| (t.clone(), t)),
        quoted_string(),
        // A token value written as a quoted-string means the same.
        token().prop_map(|t| (t.clone(), format!("\"{t}\""))),
    ];
    (token(), ows(), ows(), value).prop_map(|(name, before, after, (value, rendered))| {
        let text = format!("{name}{before}={after}{rendered}");
        ((name, value), text)
    })
}

/// A token68: the characters of RFC 9110 §11.2, then `=` padding.
fn token68() -> impl Strategy<Value = String> {
    r"[A-Za-z0-9._~+/-]{1,16}={0,2}"
}

/// A challenge and its rendering: a scheme alone, a scheme and a token68, or a scheme and a
/// list of auth-params (which may start with empty elements).
fn challenge() -> impl Strategy<Value = (Model, String)> {
    let params = (
        r" [ \t]{0,2}",
        r"(,[ \t]{0,2}){0,2}",
        prop::collection::vec((auth_param(), separator()), 1..5),
    );
    prop_oneof![
        1 => (token(), r"[ \t]{0,2}").prop_map(|(scheme, trailing)| {
            let text = format!("{scheme}{trailing}");
            let model = Model {
                scheme,
                token68: None,
                params: Vec::new(),
            };
            (model, text)
        }),
        1 => (token(), r" [ \t]{0,2}", token68(), ows()).prop_map(|(scheme, space, t68, trailing)| {
            let text = format!("{scheme}{space}{t68}{trailing}");
            let model = Model {
                scheme,
                token68: Some(t68),
                params: Vec::new(),
            };
            (model, text)
        }),
        3 => (token(), params).prop_map(|(scheme, (space, empty, params))| {
            let mut text = format!("{scheme}{space}{empty}");
            let mut model = Model {
                scheme,
                token68: None,
                params: Vec::new(),
            };
            let last = params.len() - 1;
            for (i, ((param, rendered), sep)) in params.into_iter().enumerate() {
                text.push_str(&rendered);
                if i < last {
                    text.push_str(&sep);
                }
                model.params.push(param);
            }
            (model, text)
        }),
    ]
}

/// A whole header value: challenges joined by separators, with optional empty elements and
/// whitespace before the first and after the last.
fn header() -> impl Strategy<Value = (Vec<Model>, String)> {
    (
        r"([ \t]{0,2},){0,2}[ \t]{0,2}",
        prop::collection::vec((challenge(), separator()), 0..5),
        r"[ \t]{0,2}(,[ \t]{0,2}){0,2}",
    )
        .prop_map(|(leading, challenges, trailing)| {
            let mut text = leading;
            let mut models = Vec::new();
            let last = challenges.len().saturating_sub(1);
            for (i, ((model, rendered), sep)) in challenges.into_iter().enumerate() {
                text.push_str(&rendered);
                if i < last {
                    text.push_str(&sep);
                }
                models.push(model);
            }
            text.push_str(&trailing);
            (models, text)
        })
}

/// A list element that is no challenge and no auth-param: it starts with a character that
/// cannot start a token, and has no comma or quote that could end it early or late.
fn garbage_element() -> impl Strategy<Value = String> {
    (
        prop::sample::select(
            &[
                '@', '(', ')', '/', ':', ';', '<', '>', '?', '[', ']', '{', '}', '=', 'é',
            ][..],
        ),
        r#"[^,"\x00-\x1f\x7f]{0,10}"#,
    )
        .prop_map(|(first, rest)| format!("{first}{rest}"))
}

/// Pieces that steer random strings into the parser's interesting paths.
const PIECES: &[&[u8]] = &[
    b"Bearer",
    b"Basic",
    b"Negotiate",
    b"realm",
    b"error",
    b"invalid_token",
    b" ",
    b"\t",
    b",",
    b"=",
    b"==",
    b"\"",
    b"\\",
    b"\\\"",
    b"a",
    b"/",
    b"\xc3\xa9",
    b"\xff",
    b"\x00",
    b"\x7f",
];

/// Random bytes built mostly from [`PIECES`].
fn noisy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        2 => prop::sample::select(PIECES).prop_map(<[u8]>::to_vec),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// A valid header with a few bytes inserted, removed or replaced.
fn mutated_header() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        0..3u8,
        prop::sample::select(PIECES),
    );
    (header(), prop::collection::vec(edit, 1..4)).prop_map(|((_, text), edits)| {
        let mut bytes = text.into_bytes();
        for (at, what, piece) in edits {
            let at = at.index(bytes.len() + 1);
            match what {
                0 => {
                    bytes.splice(at..at, piece.iter().copied());
                }
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ if at < bytes.len() => bytes[at] = piece[0],
                _ => bytes.extend_from_slice(piece),
            }
        }
        bytes
    })
}

/// Parses `bytes` every way the crate can: as a string, and as a header line if it is one.
fn check_any_input(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    let challenges = parse_challenges(&text);
    assert_well_formed(&challenges);
    if let Ok(value) = HeaderValue::from_bytes(bytes) {
        let mut map = HeaderMap::new();
        map.insert(WWW_AUTHENTICATE, value);
        let from_headers: Vec<_> = challenges_of(&map);
        assert_well_formed(&from_headers);
        let _ = default_verdict(StatusCode::UNAUTHORIZED, &map);
    }
    challenges.len()
}

fn challenges_of(map: &HeaderMap) -> Vec<Challenge<'_>> {
    challenges(map).collect()
}

/// The default rule of the design, written from the model rather than the parser. A `DPoP`
/// challenge (RFC 9449 §7.1) counts as a `Bearer` one.
fn expected_verdict(status: StatusCode, models: &[Model]) -> Verdict {
    if status != StatusCode::UNAUTHORIZED {
        return Verdict::Accepted;
    }
    let bearers: Vec<_> = models
        .iter()
        .filter(|m| {
            m.scheme.eq_ignore_ascii_case("bearer") || m.scheme.eq_ignore_ascii_case("dpop")
        })
        .collect();
    let rejected = bearers.iter().any(|m| {
        let error = m
            .params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("error"))
            .map(|(_, v)| v.as_str());
        error.is_none_or(|e| e.is_empty() || e.eq_ignore_ascii_case("invalid_token"))
    });
    if rejected || bearers.is_empty() {
        Verdict::TokenRejected
    } else {
        Verdict::Accepted
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Rendered challenges parse back to the same schemes, token68s, param names and values.
    #[test]
    fn rendered_challenges_parse_back((models, text) in header()) {
        prop_assert_eq!(parsed(&text), models, "parsing {:?}", text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A broken element between two challenges is skipped; nothing around it is lost or
    /// mis-attributed.
    #[test]
    fn garbage_between_challenges_is_skipped(
        (before, before_text) in header(),
        garbage in garbage_element(),
        (after, after_text) in header(),
    ) {
        let text = format!("{before_text}, {garbage} ,{after_text}");
        let mut expected = before;
        expected.extend(after);
        prop_assert_eq!(parsed(&text), expected, "parsing {:?}", text);
    }

    /// Header lines are parsed one by one, and a line that is not visible ASCII is skipped.
    #[test]
    fn challenges_span_header_lines(lines in prop::collection::vec(header(), 0..4)) {
        let mut map = HeaderMap::new();
        let mut expected = Vec::new();
        for (models, text) in lines {
            let value = HeaderValue::from_str(&text).expect("rendered values are header values");
            if value.to_str().is_ok() {
                expected.extend(models);
            }
            map.append(WWW_AUTHENTICATE, value);
        }
        let got: Vec<_> = challenges(&map).map(|c| Model::of(&c)).collect();
        prop_assert_eq!(got, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The default rule over generated challenges, from the model.
    #[test]
    fn default_verdict_follows_the_bearer_challenges(
        lines in prop::collection::vec(header(), 0..3),
        status in prop::sample::select(&[401u16, 401, 401, 400, 403, 200, 500][..]),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let mut map = HeaderMap::new();
        let mut models = Vec::new();
        for (line, text) in lines {
            let value = HeaderValue::from_str(&text).unwrap();
            if value.to_str().is_ok() {
                models.extend(line);
            }
            map.append(WWW_AUTHENTICATE, value);
        }
        prop_assert_eq!(default_verdict(status, &map), expected_verdict(status, &models));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary strings and bytes: no panic, and only well-formed parts come out.
    #[test]
    fn arbitrary_input_is_parsed_safely(
        text in any::<String>(),
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        check_any_input(text.as_bytes());
        check_any_input(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Valid headers with a few bytes changed: no panic, only well-formed parts.
    #[test]
    fn near_valid_input_is_parsed_safely(bytes in mutated_header()) {
        check_any_input(&bytes);
    }
}

#[test]
fn random_input_never_panics() {
    let with_challenges = Cell::new(0usize);
    let mut runner = TestRunner::new(Config::with_cases(2_000));
    runner
        .run(&noisy_bytes(), |bytes| {
            let found = check_any_input(&bytes);
            with_challenges.set(with_challenges.get() + usize::from(found > 0));
            Ok(())
        })
        .unwrap();
    // The pieces make sure the runs did more than feed the parser junk.
    let seen = with_challenges.get();
    assert!(seen > 100, "only {seen} inputs had a challenge");
}
