//! The `WWW-Authenticate` challenge parser (RFC 7235 §2.1 / RFC 9110 §11.6.1).

use std::borrow::Cow;

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;

/// One challenge of a `WWW-Authenticate` header (RFC 7235 §2.1 / RFC 9110 §11.6.1).
///
/// A challenge has a scheme and then either a `token68` or a list of auth-params, never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge<'a> {
    scheme: &'a str,
    token68: Option<&'a str>,
    params: Vec<(&'a str, Cow<'a, str>)>,
}

impl<'a> Challenge<'a> {
    /// The auth-scheme as written, e.g. `Bearer`.
    #[must_use]
    pub fn scheme(&self) -> &'a str {
        self.scheme
    }

    /// Whether the scheme is `scheme`, compared ASCII case-insensitively as RFC 9110 asks.
    #[must_use]
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The token68 credentials-like value (e.g. `abc123==` in `Negotiate abc123==`), if the
    /// challenge has one instead of auth-params.
    #[must_use]
    pub fn token68(&self) -> Option<&'a str> {
        self.token68
    }

    /// The value of the first auth-param named `name` (ASCII case-insensitive), with a
    /// quoted-string value unquoted and unescaped.
    #[must_use]
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// All auth-params in the order written, names as written, values unquoted and unescaped.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, &str)> + '_ {
        self.params.iter().map(|(n, v)| (*n, v.as_ref()))
    }
}

/// Parses one `WWW-Authenticate` header value into its challenges.
///
/// Never panics. Malformed parts are skipped, never mis-attributed: parsing picks up again at the
/// next comma (outside a quoted string) that starts a new challenge or auth-param. An auth-param
/// that cannot belong to a challenge (one that follows a `token68`, a lone scheme directly
/// followed by a comma, or a skipped scheme) is dropped. After a comma, an element that is not
/// `name =` is taken for a challenge, so a broken one also ends the challenge before it.
#[must_use]
pub fn parse_challenges(value: &str) -> Vec<Challenge<'_>> {
    let mut out: Vec<Challenge<'_>> = Vec::new();
    let mut sc = Scanner::new(value);
    // Whether the last challenge in `out` may still take auth-params: only one whose scheme was
    // followed by a space and not by a token68.
    let mut open = false;

    loop {
        sc.skip_separators();
        if sc.at_end() {
            break;
        }

        // After a comma, `name =` can only be an auth-param; anything else starts a challenge.
        if sc.looks_like_param() {
            let start = sc.pos;
            match (sc.auth_param(), out.last_mut()) {
                (Some(param), Some(challenge)) if open => challenge.params.push(param),
                (Some(_), _) => {}
                (None, _) => {
                    // Restart from the element's start so that quotes are skipped as a whole.
                    sc.pos = start;
                    sc.skip_element();
                }
            }
            continue;
        }

        open = false;
        let scheme = sc.token();
        if scheme.is_empty() {
            sc.skip_element();
            continue;
        }
        let mut challenge = Challenge {
            scheme,
            token68: None,
            params: Vec::new(),
        };
        if sc.at_element_end() {
            out.push(challenge);
            continue;
        }
        if !sc.skip_ws() {
            // The scheme runs into something that is not a token: not a challenge at all.
            sc.skip_element();
            continue;
        }
        if let Some(token68) = sc.token68() {
            challenge.token68 = Some(token68);
            out.push(challenge);
            continue;
        }
        out.push(challenge);
        open = true;
        // The first element after the scheme must be an auth-param (or empty); garbage here
        // must not be read as the scheme of another challenge.
        if !sc.at_element_end() && !sc.looks_like_param() {
            sc.skip_element();
        }
    }
    out
}

/// All challenges of all `WWW-Authenticate` headers of a response, in order.
///
/// Each header line is parsed on its own with [`parse_challenges`]. Values that are not valid
/// UTF-8 / visible ASCII are skipped.
pub fn challenges(headers: &HeaderMap) -> impl Iterator<Item = Challenge<'_>> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(parse_challenges)
}

/// Panics unless every challenge is well formed: what holds of every parse, whatever the
/// input. The property tests and the fuzz targets both check it.
#[cfg(any(test, fuzzing))]
pub(crate) fn assert_well_formed(challenges: &[Challenge<'_>]) {
    for c in challenges {
        assert!(!c.scheme().is_empty() && c.scheme().bytes().all(is_tchar));
        if let Some(t68) = c.token68() {
            assert_eq!(c.params().count(), 0, "a token68 and params in {c:?}");
            let body = t68.trim_end_matches('=');
            assert!(
                !body.is_empty() && body.bytes().all(is_token68_char),
                "{c:?}"
            );
        }
        for (name, value) in c.params() {
            assert!(!name.is_empty() && name.bytes().all(is_tchar), "{c:?}");
            assert!(
                !value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f),
                "a control character in {c:?}"
            );
        }
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The characters of a token68 before its `=` padding (RFC 9110 §11.2).
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// A cursor over the header value's bytes.
///
/// It only ever stops on ASCII bytes when a slice is taken, so every slice falls on a `char`
/// boundary; slicing still goes through `str::get` so that a mistake could never panic.
struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(s: &'a str) -> Self {
        Scanner { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn slice(&self, start: usize, end: usize) -> &'a str {
        self.s.get(start..end).unwrap_or_default()
    }

    /// Whether the current list element ends here.
    fn at_element_end(&self) -> bool {
        matches!(self.peek(), None | Some(b','))
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        self.slice(start, self.pos)
    }

    /// Skips optional whitespace (`OWS`/`BWS`); returns whether there was any.
    fn skip_ws(&mut self) -> bool {
        !self.take_while(|b| b == b' ' || b == b'\t').is_empty()
    }

    /// Skips whitespace and commas, which also drops empty list elements (`, ,`).
    fn skip_separators(&mut self) {
        self.take_while(|b| b == b' ' || b == b'\t' || b == b',');
    }

    fn token(&mut self) -> &'a str {
        self.take_while(is_tchar)
    }

    /// Whether `token BWS "="` comes next; consumes nothing.
    fn looks_like_param(&mut self) -> bool {
        let start = self.pos;
        let found = !self.token().is_empty() && {
            self.skip_ws();
            self.peek() == Some(b'=')
        };
        self.pos = start;
        found
    }

    /// A token68 that makes up the rest of the list element, or nothing consumed.
    ///
    /// `realm="x"` or `a=b` start like a token68 but go on after the `=`, so they are
    /// auth-params instead.
    fn token68(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if self.take_while(is_token68_char).is_empty() {
            return None;
        }
        self.take_while(|b| b == b'=');
        let end = self.pos;
        self.skip_ws();
        if self.at_element_end() {
            Some(self.slice(start, end))
        } else {
            self.pos = start;
            None
        }
    }

    /// `token BWS "=" BWS ( token / quoted-string )`, which must end the list element.
    fn auth_param(&mut self) -> Option<(&'a str, Cow<'a, str>)> {
        let name = self.token();
        if name.is_empty() {
            return None;
        }
        self.skip_ws();
        if !self.eat(b'=') {
            return None;
        }
        self.skip_ws();
        let value = if self.peek() == Some(b'"') {
            self.quoted_string()?
        } else {
            let token = self.token();
            if token.is_empty() {
                return None;
            }
            Cow::Borrowed(token)
        };
        self.skip_ws();
        self.at_element_end().then_some((name, value))
    }

    /// A quoted-string starting at the opening quote, unescaped. `None` if it is unterminated
    /// or holds a control character: such a value is skipped rather than guessed at.
    fn quoted_string(&mut self) -> Option<Cow<'a, str>> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        let mut escaped = false;
        loop {
            let b = self.peek()?;
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                return None;
            }
            match b {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    // The escaped byte may be the first of a multi-byte char; the rest of it
                    // can be neither a quote nor a backslash, so the scan stays correct.
                    let next = self.peek()?;
                    if (next < 0x20 && next != b'\t') || next == 0x7f {
                        return None;
                    }
                    self.pos += 1;
                }
                _ => self.pos += 1,
            }
        }
        let raw = self.slice(start, self.pos);
        self.pos += 1; // the closing quote
        if !escaped {
            return Some(Cow::Borrowed(raw));
        }
        let mut unescaped = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                // The scan above guarantees a char follows every backslash.
                unescaped.extend(chars.next());
            } else {
                unescaped.push(c);
            }
        }
        Some(Cow::Owned(unescaped))
    }

    /// Skips to the next comma that is outside a quoted string, or to the end.
    ///
    /// This is lenient on purpose (control characters, unterminated quotes) since it only
    /// discards what it passes over.
    fn skip_element(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b',' => return,
                b'"' => {
                    self.pos += 1;
                    while let Some(b) = self.peek() {
                        self.pos += 1;
                        match b {
                            b'"' => break,
                            b'\\' if self.peek().is_some() => self.pos += 1,
                            _ => {}
                        }
                    }
                }
                _ => self.pos += 1,
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http::HeaderValue;

    /// A challenge with everything owned, to compare against expectations.
    type Owned = (String, Option<String>, Vec<(String, String)>);

    fn parsed(value: &str) -> Vec<Owned> {
        parse_challenges(value)
            .iter()
            .map(|c| {
                (
                    c.scheme().to_owned(),
                    c.token68().map(str::to_owned),
                    c.params()
                        .map(|(n, v)| (n.to_owned(), v.to_owned()))
                        .collect(),
                )
            })
            .collect()
    }

    fn ch(scheme: &str, params: &[(&str, &str)]) -> Owned {
        (
            scheme.to_owned(),
            None,
            params
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn ch68(scheme: &str, token68: &str) -> Owned {
        (scheme.to_owned(), Some(token68.to_owned()), Vec::new())
    }

    #[test]
    fn parses_header_forms() {
        let cases: Vec<(&str, Vec<Owned>)> = vec![
            ("Bearer", vec![ch("Bearer", &[])]),
            (
                r#"Bearer realm="example""#,
                vec![ch("Bearer", &[("realm", "example")])],
            ),
            (
                r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
                vec![ch(
                    "Bearer",
                    &[
                        ("realm", "example"),
                        ("error", "invalid_token"),
                        ("error_description", "The access token expired"),
                    ],
                )],
            ),
            (
                r#"Bearer error="invalid_token", error_description="a, b, \"c\"""#,
                vec![ch(
                    "Bearer",
                    &[
                        ("error", "invalid_token"),
                        ("error_description", r#"a, b, "c""#),
                    ],
                )],
            ),
            (
                r#"Basic realm="x", Bearer error="invalid_token""#,
                vec![
                    ch("Basic", &[("realm", "x")]),
                    ch("Bearer", &[("error", "invalid_token")]),
                ],
            ),
            (
                "Bearer error=invalid_token",
                vec![ch("Bearer", &[("error", "invalid_token")])],
            ),
            (
                r#"bearer ERROR="invalid_token""#,
                vec![ch("bearer", &[("ERROR", "invalid_token")])],
            ),
            // The example of RFC 7235 §4.1.
            (
                r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#,
                vec![
                    ch(
                        "Newauth",
                        &[
                            ("realm", "apps"),
                            ("type", "1"),
                            ("title", r#"Login to "apps""#),
                        ],
                    ),
                    ch("Basic", &[("realm", "simple")]),
                ],
            ),
            ("Negotiate abc123==", vec![ch68("Negotiate", "abc123==")]),
            (
                "Negotiate a/b+c~d.e_f-g",
                vec![ch68("Negotiate", "a/b+c~d.e_f-g")],
            ),
            (
                r#"Bearer realm = "x" , error = "invalid_token""#,
                vec![ch("Bearer", &[("realm", "x"), ("error", "invalid_token")])],
            ),
            (
                "Bearer\trealm\t=\tx\t,\terror=y",
                vec![ch("Bearer", &[("realm", "x"), ("error", "y")])],
            ),
            (
                r#", , Bearer error="invalid_token""#,
                vec![ch("Bearer", &[("error", "invalid_token")])],
            ),
            (
                r#"Bearer realm="a",, ,error="invalid_token",  "#,
                vec![ch("Bearer", &[("realm", "a"), ("error", "invalid_token")])],
            ),
            // Unterminated: the value is dropped, the challenge stays.
            (r#"Bearer error="unterminated"#, vec![ch("Bearer", &[])]),
            (
                r#"Bearer realm="x", error="unterminated"#,
                vec![ch("Bearer", &[("realm", "x")])],
            ),
            (
                r#"Bearer realm="a\\b""#,
                vec![ch("Bearer", &[("realm", r"a\b")])],
            ),
            (
                r#"Bearer realm="a\b""#,
                vec![ch("Bearer", &[("realm", "ab")])],
            ),
            (
                r#"Bearer scope="read write""#,
                vec![ch("Bearer", &[("scope", "read write")])],
            ),
            (r#"Bearer realm="""#, vec![ch("Bearer", &[("realm", "")])]),
            ("", vec![]),
            ("   ", vec![]),
            ("=", vec![]),
            ("\"", vec![]),
            (",,,", vec![]),
            ("=, =, \"\"", vec![]),
            (
                r#"Bearer ,error="invalid_token""#,
                vec![ch("Bearer", &[("error", "invalid_token")])],
            ),
            // A lone scheme followed directly by a comma ends its challenge (RFC 7235 asks for a
            // space before the params), so the param after it belongs to nothing.
            (r#"Bearer, error="invalid_token""#, vec![ch("Bearer", &[])]),
            ("Basic, Bearer", vec![ch("Basic", &[]), ch("Bearer", &[])]),
            // Params after a token68 belong to nothing either.
            (
                r#"Negotiate abc==, realm="x", Bearer"#,
                vec![ch68("Negotiate", "abc=="), ch("Bearer", &[])],
            ),
            // A param with no challenge before it is dropped.
            (
                r#"realm="x", Bearer error="invalid_token""#,
                vec![ch("Bearer", &[("error", "invalid_token")])],
            ),
            // Garbage inside a challenge: the bad element is skipped, the next param kept.
            (
                r#"Bearer realm="a"junk, error="invalid_token""#,
                vec![ch("Bearer", &[("error", "invalid_token")])],
            ),
            (
                r#"Bearer "x", error="invalid_token""#,
                vec![ch("Bearer", &[("error", "invalid_token")])],
            ),
            // By the grammar (BWS around `=`) this is the auth-param `Bearer = x`, not a
            // challenge, so there is nothing for `error` to belong to.
            (r#"Bearer =x, error="invalid_token""#, vec![]),
            (
                r#"Bearer abc def, error="invalid_token""#,
                vec![ch("Bearer", &[("error", "invalid_token")])],
            ),
            (
                "Bearer realm=x, error=",
                vec![ch("Bearer", &[("realm", "x")])],
            ),
            // Same text, other order: `error=` alone after the space is a token68 by the grammar,
            // and the param after a token68 belongs to nothing.
            ("Bearer error=, realm=x", vec![ch68("Bearer", "error=")]),
            // A scheme glued to a non-token character is not a challenge; its params go with it.
            (
                r#"Bearer@ error="invalid_token", Basic realm="b""#,
                vec![ch("Basic", &[("realm", "b")])],
            ),
            // The comma inside the skipped quoted string does not end the skipped element.
            (
                r#"Bearer x="a, Basic" junk, error="e""#,
                vec![ch("Bearer", &[("error", "e")])],
            ),
            // Non-ASCII: not a token, but fine inside a quoted string (obs-text). `é=1` is not
            // `name =`, so it is read as a broken challenge, and what follows is not Bearer's.
            (
                r#"Bearer realm="café", é=1, error="invalid_token""#,
                vec![ch("Bearer", &[("realm", "café")])],
            ),
            (
                r#"Bearer realm="café", Bäsic realm="x", Basic"#,
                vec![ch("Bearer", &[("realm", "café")]), ch("Basic", &[])],
            ),
            (
                r#"Bearer realm="\é""#,
                vec![ch("Bearer", &[("realm", "é")])],
            ),
            ("Bärer realm=x", vec![]),
            // A control character makes the quoted value malformed.
            (
                "Bearer realm=\"a\u{1}b, c\", error=x",
                vec![ch("Bearer", &[("error", "x")])],
            ),
            // A scheme followed by a space and nothing else.
            ("Bearer ", vec![ch("Bearer", &[])]),
            // `realm=` is a token68 by the grammar (1 char, then `=` padding).
            ("Bearer realm=", vec![ch68("Bearer", "realm=")]),
        ];
        for (value, expected) in cases {
            assert_eq!(parsed(value), expected, "parsing {value:?}");
        }
    }

    #[test]
    fn values_are_borrowed_unless_unescaped() {
        let parsed = parse_challenges(r#"Bearer realm="plain", error=tok, title="with \"q\"""#);
        let params = &parsed[0].params;
        assert!(matches!(params[0].1, Cow::Borrowed("plain")));
        assert!(matches!(params[1].1, Cow::Borrowed("tok")));
        assert!(matches!(&params[2].1, Cow::Owned(s) if s == r#"with "q""#));
    }

    #[test]
    fn challenge_accessors() {
        let parsed = parse_challenges(r#"bEaReR Realm="r", ERROR=invalid_token, realm="second""#);
        let c = &parsed[0];
        assert_eq!(c.scheme(), "bEaReR");
        assert!(c.is_scheme("Bearer"));
        assert!(c.is_scheme("BEARER"));
        assert!(!c.is_scheme("Basic"));
        assert_eq!(c.token68(), None);
        // The first param of that name wins.
        assert_eq!(c.param("realm"), Some("r"));
        assert_eq!(c.param("error"), Some("invalid_token"));
        assert_eq!(c.param("scope"), None);
        let all: Vec<_> = c.params().collect();
        assert_eq!(
            all,
            [
                ("Realm", "r"),
                ("ERROR", "invalid_token"),
                ("realm", "second")
            ]
        );

        let negotiate = parse_challenges("Negotiate abc123==");
        assert_eq!(negotiate[0].token68(), Some("abc123=="));
        assert_eq!(negotiate[0].params().count(), 0);
        assert_eq!(negotiate[0].param("abc123"), None);
    }

    /// A header map with one `WWW-Authenticate` line per value, for the tests here and in
    /// the classification rule's.
    pub(in crate::classify) fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            let value = HeaderValue::from_bytes(value).expect("test header value");
            map.append(WWW_AUTHENTICATE, value);
        }
        map
    }

    fn schemes_and_errors(map: &HeaderMap) -> Vec<(String, Option<String>)> {
        challenges(map)
            .map(|c| (c.scheme().to_owned(), c.param("error").map(str::to_owned)))
            .collect()
    }

    #[test]
    fn challenges_across_header_lines() {
        let mut map = headers(&[
            br#"Basic realm="a""#,
            br#"Bearer error="invalid_token", Newauth"#,
        ]);
        map.insert(http::header::AUTHORIZATION, HeaderValue::from_static("x"));
        assert_eq!(
            schemes_and_errors(&map),
            [
                ("Basic".to_owned(), None),
                ("Bearer".to_owned(), Some("invalid_token".to_owned())),
                ("Newauth".to_owned(), None),
            ]
        );
        assert_eq!(challenges(&HeaderMap::new()).count(), 0);
    }

    #[test]
    fn non_utf8_header_values_are_skipped() {
        let map = headers(&[
            b"Bearer realm=\"caf\xe9\"",
            b"Bearer realm=\"\xc3\xa9\"",
            br#"Basic realm="ok""#,
        ]);
        assert_eq!(schemes_and_errors(&map), [("Basic".to_owned(), None)]);
    }
}
