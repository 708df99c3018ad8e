//! Deciding whether a response says the bearer token was rejected.
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, HeaderValue, StatusCode, header::WWW_AUTHENTICATE};
//! use oauth_refresh::classify::{
//!     ClassifyRejection, DefaultClassifier, Verdict, default_verdict, parse_challenges,
//! };
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(
//!     WWW_AUTHENTICATE,
//!     HeaderValue::from_static(r#"Bearer realm="api", error="invalid_token""#),
//! );
//!
//! // The default rule: a 401 whose Bearer challenge says `invalid_token` is a rejection.
//! assert_eq!(
//!     DefaultClassifier.classify(StatusCode::UNAUTHORIZED, &headers),
//!     Verdict::TokenRejected
//! );
//! // Any other status never is.
//! assert_eq!(
//!     default_verdict(StatusCode::FORBIDDEN, &headers),
//!     Verdict::Accepted
//! );
//!
//! // A closure is a classifier too; this one also treats 403 as "token rejected".
//! let classifier = |status: StatusCode, headers: &HeaderMap| {
//!     if status == StatusCode::FORBIDDEN {
//!         Verdict::TokenRejected
//!     } else {
//!         default_verdict(status, headers)
//!     }
//! };
//! assert_eq!(
//!     classifier.classify(StatusCode::FORBIDDEN, &headers),
//!     Verdict::TokenRejected
//! );
//!
//! // The parser is public for classifiers of your own.
//! let challenges = parse_challenges(r#"Basic realm="x", Bearer error="invalid_token""#);
//! assert_eq!(challenges.len(), 2);
//! assert!(challenges[1].is_scheme("bearer"));
//! assert_eq!(challenges[1].param("error"), Some("invalid_token"));
//! ```

use http::{HeaderMap, StatusCode};

mod challenge;

#[cfg(any(test, fuzzing))]
pub(crate) use challenge::assert_well_formed;
pub use challenge::{Challenge, challenges, parse_challenges};

/// What a classifier decided about a response's status and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The token was not rejected; the response goes back to the caller.
    Accepted,
    /// The token was rejected; the layer refreshes (or picks up a newer token) and resends once.
    TokenRejected,
    /// Decide from the body: the layer reads at most `limit` bytes of it and calls
    /// [`ClassifyRejection::classify_body`]. The body is handed back intact if the token was not
    /// rejected.
    ReadBody {
        /// The most bytes to read.
        limit: usize,
    },
}

/// Decides whether a response means "your token was rejected".
///
/// Replace the default ([`DefaultClassifier`]) for APIs that answer expiry differently (e.g.
/// `400 {"error":"token_expired"}` or a 403). Any
/// `Fn(StatusCode, &HeaderMap) -> Verdict + Send + Sync + 'static` closure is a classifier too.
pub trait ClassifyRejection: Send + Sync + 'static {
    /// Decides from the status and headers alone, or asks for the body with
    /// [`Verdict::ReadBody`].
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict;

    /// Called with up to `limit` bytes of the body (fewer if the body ended) after
    /// [`classify`](ClassifyRejection::classify) returned [`Verdict::ReadBody`]; returns whether
    /// the token was rejected. Default: `false`.
    fn classify_body(&self, status: StatusCode, headers: &HeaderMap, body_prefix: &[u8]) -> bool {
        let _ = (status, headers, body_prefix);
        false
    }
}

/// The crate's default rule, [`default_verdict`], as a classifier.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl ClassifyRejection for DefaultClassifier {
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        default_verdict(status, headers)
    }
}

/// Closures classify too; they never ask for the body's verdict through
/// [`classify_body`](ClassifyRejection::classify_body), which keeps its default (`false`).
impl<F> ClassifyRejection for F
where
    F: Fn(StatusCode, &HeaderMap) -> Verdict + Send + Sync + 'static,
{
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        self(status, headers)
    }
}

/// The default rule as a public function, so custom classifiers can fall back on it.
///
/// - Only `401 Unauthorized` can be a rejection; any other status (a 403 with
///   `insufficient_scope` included) is [`Verdict::Accepted`].
/// - A 401 with no `Bearer` challenge at all (no `WWW-Authenticate` header, or only other
///   schemes such as `Basic`) is [`Verdict::TokenRejected`].
/// - A 401 whose `Bearer` challenge has `error="invalid_token"`, or no `error` at all (such as
///   `Bearer realm="api"`), is [`Verdict::TokenRejected`]: we did send a token, and a challenge
///   without an error code is how many servers say "no valid token".
/// - A 401 whose `Bearer` challenge carries any other error (`invalid_request`,
///   `insufficient_scope`, ...) is [`Verdict::Accepted`]: a new token would not help.
/// - With several `Bearer` challenges, any one that says "rejected" wins.
/// - A `DPoP` challenge (RFC 9449 §7.1, for a DPoP-bound token) counts as a `Bearer` one:
///   `DPoP error="invalid_token"` is a rejection, `DPoP error="invalid_dpop_proof"` is not
///   (a new token would not mend the proof). A layer with a DPoP key answers
///   `use_dpop_nonce` with its own resend before any classifier is asked.
///
/// The `Bearer` scheme and the `error` value are compared ASCII case-insensitively, and an empty
/// `error=""` counts as no error code.
#[must_use]
#[inline]
pub fn default_verdict(status: StatusCode, headers: &HeaderMap) -> Verdict {
    // Inlined where it is called: most responses stop at this comparison.
    if status != StatusCode::UNAUTHORIZED {
        return Verdict::Accepted;
    }
    unauthorized_verdict(headers)
}

/// [`default_verdict`] for a 401: what its challenges say.
fn unauthorized_verdict(headers: &HeaderMap) -> Verdict {
    let mut saw_bearer = false;
    // A DPoP-bound token's challenge (RFC 9449 §7.1) uses Bearer's error codes.
    for challenge in challenges(headers).filter(|c| c.is_scheme("Bearer") || c.is_scheme("DPoP")) {
        saw_bearer = true;
        match challenge.param("error") {
            None => return Verdict::TokenRejected,
            Some(error) if error.is_empty() || error.eq_ignore_ascii_case("invalid_token") => {
                return Verdict::TokenRejected;
            }
            Some(_) => {}
        }
    }
    if saw_bearer {
        Verdict::Accepted
    } else {
        Verdict::TokenRejected
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::challenge::tests::headers;
    use super::*;

    #[test]
    fn default_verdict_table() {
        use Verdict::{Accepted, TokenRejected};
        let unauthorized = StatusCode::UNAUTHORIZED;
        let cases: Vec<(StatusCode, Vec<&[u8]>, Verdict)> = vec![
            (unauthorized, vec![], TokenRejected),
            (unauthorized, vec![br#"Basic realm="x""#], TokenRejected),
            (
                unauthorized,
                vec![br#"Bearer error="invalid_token""#],
                TokenRejected,
            ),
            (
                unauthorized,
                vec![br#"Bearer realm="api", error="INVALID_TOKEN""#],
                TokenRejected,
            ),
            (unauthorized, vec![br#"Bearer realm="api""#], TokenRejected),
            (unauthorized, vec![b"Bearer"], TokenRejected),
            (unauthorized, vec![br#"Bearer error="""#], TokenRejected),
            (
                unauthorized,
                vec![br#"Bearer error="invalid_request""#],
                Accepted,
            ),
            (
                unauthorized,
                vec![br#"Bearer error="insufficient_scope", scope="admin""#],
                Accepted,
            ),
            (
                StatusCode::FORBIDDEN,
                vec![br#"Bearer error="insufficient_scope""#],
                Accepted,
            ),
            (
                StatusCode::FORBIDDEN,
                vec![br#"Bearer error="invalid_token""#],
                Accepted,
            ),
            (StatusCode::FORBIDDEN, vec![], Accepted),
            (StatusCode::OK, vec![], Accepted),
            (
                StatusCode::BAD_REQUEST,
                vec![br#"Bearer error="invalid_token""#],
                Accepted,
            ),
            (StatusCode::INTERNAL_SERVER_ERROR, vec![], Accepted),
            (
                unauthorized,
                vec![br#"Basic realm="x", Bearer error="invalid_token""#],
                TokenRejected,
            ),
            (
                unauthorized,
                vec![br#"Basic realm="x""#, br#"Bearer error="invalid_token""#],
                TokenRejected,
            ),
            // Any Bearer challenge that says "rejected" wins.
            (
                unauthorized,
                vec![
                    br#"Bearer error="insufficient_scope""#,
                    br#"Bearer error="invalid_token""#,
                ],
                TokenRejected,
            ),
            (
                unauthorized,
                vec![br#"Bearer error="invalid_request", Bearer realm="x""#],
                TokenRejected,
            ),
            // Basic without an error next to a Bearer that has one: the Bearer one decides.
            (
                unauthorized,
                vec![br#"Bearer error="invalid_request", Basic realm="x""#],
                Accepted,
            ),
            // A non-UTF-8 header line is skipped, so it cannot hide the Bearer error.
            (
                unauthorized,
                vec![
                    b"Bearer realm=\"\xff\"",
                    br#"Bearer error="invalid_request""#,
                ],
                Accepted,
            ),
        ];
        for (status, values, expected) in cases {
            let map = headers(&values);
            assert_eq!(
                default_verdict(status, &map),
                expected,
                "{status} with {map:?}"
            );
            assert_eq!(DefaultClassifier.classify(status, &map), expected);
            assert!(!DefaultClassifier.classify_body(status, &map, b"{}"));
        }
    }

    fn assert_classifier<C: ClassifyRejection>(classifier: &C) -> &C {
        classifier
    }

    #[test]
    fn closure_classifier() {
        let classifier = assert_classifier(&|status: StatusCode, headers: &HeaderMap| {
            if status == StatusCode::FORBIDDEN {
                Verdict::TokenRejected
            } else {
                default_verdict(status, headers)
            }
        });
        let empty = HeaderMap::new();
        assert_eq!(
            classifier.classify(StatusCode::FORBIDDEN, &empty),
            Verdict::TokenRejected
        );
        assert_eq!(
            classifier.classify(StatusCode::UNAUTHORIZED, &empty),
            Verdict::TokenRejected
        );
        assert_eq!(
            classifier.classify(StatusCode::OK, &empty),
            Verdict::Accepted
        );
        assert!(!classifier.classify_body(StatusCode::FORBIDDEN, &empty, b"token_expired"));

        // Usable as a trait object, as the layer may store it.
        let boxed: Box<dyn ClassifyRejection> = Box::new(DefaultClassifier);
        assert_eq!(
            boxed.classify(StatusCode::UNAUTHORIZED, &empty),
            Verdict::TokenRejected
        );
    }

    /// An API that answers expiry with `400 {"error":"token_expired"}`.
    struct ExpiredInBody;

    impl ClassifyRejection for ExpiredInBody {
        fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
            if status == StatusCode::BAD_REQUEST {
                Verdict::ReadBody { limit: 256 }
            } else {
                default_verdict(status, headers)
            }
        }

        fn classify_body(&self, _: StatusCode, _: &HeaderMap, body_prefix: &[u8]) -> bool {
            let needle = br#""error":"token_expired""#;
            body_prefix.windows(needle.len()).any(|w| w == needle)
        }
    }

    #[test]
    fn body_classifier() {
        let classifier = assert_classifier(&ExpiredInBody);
        let empty = HeaderMap::new();
        assert_eq!(
            classifier.classify(StatusCode::BAD_REQUEST, &empty),
            Verdict::ReadBody { limit: 256 }
        );
        assert!(classifier.classify_body(
            StatusCode::BAD_REQUEST,
            &empty,
            br#"{"error":"token_expired","message":"expired 3s ago"}"#
        ));
        assert!(!classifier.classify_body(
            StatusCode::BAD_REQUEST,
            &empty,
            br#"{"error":"invalid_grant"}"#
        ));
        // A prefix cut before the needle ends does not match.
        assert!(!classifier.classify_body(StatusCode::BAD_REQUEST, &empty, br#"{"error":"tok"#));
        assert!(!classifier.classify_body(StatusCode::BAD_REQUEST, &empty, b""));
        assert_eq!(
            classifier.classify(StatusCode::OK, &empty),
            Verdict::Accepted
        );
    }
}
