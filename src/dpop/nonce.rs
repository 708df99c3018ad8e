//! The nonces servers hand out (RFC 9449 §8, §9): one per origin, the newest seen.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use http::{HeaderMap, Uri};

/// The `DPoP-Nonce` header.
pub(crate) const DPOP_NONCE: &str = "dpop-nonce";

/// Origins remembered at most: past this many, all are forgotten at once, and each origin's
/// next request learns its nonce again (one `use_dpop_nonce` resend).
const MAX_ORIGINS: usize = 1024;

/// A nonce longer than this is not kept: no server needs it, and a hostile one would make
/// every proof carry it.
const MAX_NONCE_LEN: usize = 512;

/// The newest nonce of each origin (scheme, host and port), learned from every response that
/// carries `DPoP-Nonce`, the token endpoint's and the APIs' alike. Cheap to clone; clones
/// share the nonces.
///
/// ```
/// use oauth_refresh::dpop::Nonces;
///
/// let nonces = Nonces::default();
/// let api: http::Uri = "https://api.example.com/items".parse().unwrap();
/// let mut headers = http::HeaderMap::new();
/// headers.insert("dpop-nonce", "eyJ7S_zG.eyJH0-Z.HX4w-7v".parse().unwrap());
/// nonces.learn(&api, &headers);
///
/// let other_path: http::Uri = "https://api.example.com:443/other?x=1".parse().unwrap();
/// assert_eq!(nonces.get(&other_path).as_deref(), Some("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
/// assert!(nonces.get(&"https://login.example.com/token".parse().unwrap()).is_none());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Nonces {
    by_origin: Arc<RwLock<HashMap<Origin, Arc<str>>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(uri: &Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri.port_u16().or(match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        })?;
        Some(Origin { scheme, host, port })
    }
}

impl Nonces {
    /// The nonce to put in the next proof for `uri`'s origin, if its server gave one.
    pub fn get(&self, uri: &Uri) -> Option<Arc<str>> {
        let origin = Origin::of(uri)?;
        let nonces = self
            .by_origin
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        nonces.get(&origin).cloned()
    }

    /// Keeps the nonce of a response from `uri`'s origin, if it carries one (the last
    /// `DPoP-Nonce`, if several); a value that is not a nonce's characters (RFC 9449 §8:
    /// visible ASCII but `"` and `\`) or is longer than 512 bytes is ignored. `true` if the
    /// origin's nonce changed.
    pub fn learn(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        let Some(nonce) = headers.get_all(DPOP_NONCE).iter().next_back() else {
            return false;
        };
        let Some(nonce) = nonce.to_str().ok().filter(|nonce| is_nonce(nonce)) else {
            return false;
        };
        let Some(origin) = Origin::of(uri) else {
            return false;
        };
        if self.get(uri).as_deref() == Some(nonce) {
            return false;
        }
        let mut nonces = self
            .by_origin
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if nonces.len() >= MAX_ORIGINS && !nonces.contains_key(&origin) {
            nonces.clear();
        }
        nonces.insert(origin, nonce.into());
        true
    }
}

/// `1*NQCHAR`, NQCHAR = %x21 / %x23-5B / %x5D-7E.
fn is_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce.len() <= MAX_NONCE_LEN
        && nonce
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce_header(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(DPOP_NONCE, value.parse().unwrap());
        headers
    }

    #[test]
    fn each_origin_has_its_own_newest_nonce() {
        let nonces = Nonces::default();
        let api: Uri = "https://api.test/a".parse().unwrap();
        let login: Uri = "https://login.test/token".parse().unwrap();
        let api_8443: Uri = "https://api.test:8443/a".parse().unwrap();
        assert!(nonces.learn(&api, &nonce_header("n-1")));
        assert!(!nonces.learn(&api, &nonce_header("n-1")), "unchanged");
        assert!(nonces.learn(&login, &nonce_header("l-1")));
        assert!(nonces.learn(&api, &nonce_header("n-2")));
        assert_eq!(nonces.get(&api).as_deref(), Some("n-2"));
        assert_eq!(nonces.get(&login).as_deref(), Some("l-1"));
        assert_eq!(nonces.get(&api_8443), None, "another port, another origin");
        let http: Uri = "http://api.test/a".parse().unwrap();
        assert_eq!(nonces.get(&http), None, "another scheme, another origin");
        assert!(!nonces.learn(&api, &HeaderMap::new()));
        assert_eq!(
            nonces.get(&api).as_deref(),
            Some("n-2"),
            "kept without a header"
        );
    }

    #[test]
    fn values_that_are_not_nonces_are_ignored() {
        let nonces = Nonces::default();
        let api: Uri = "https://api.test/a".parse().unwrap();
        for bad in ["a\"b", "a\\b", "a b", &"n".repeat(MAX_NONCE_LEN + 1)] {
            assert!(!nonces.learn(&api, &nonce_header(bad)), "{bad:?}");
        }
        assert_eq!(nonces.get(&api), None);
    }

    #[test]
    fn past_the_cap_origins_are_forgotten_not_grown() {
        let nonces = Nonces::default();
        for i in 0..MAX_ORIGINS + 10 {
            let uri: Uri = format!("https://api-{i}.test/").parse().unwrap();
            nonces.learn(&uri, &nonce_header("n"));
        }
        let held = nonces.by_origin.read().unwrap().len();
        assert!(held <= MAX_ORIGINS, "{held}");
        let last: Uri = format!("https://api-{}.test/", MAX_ORIGINS + 9)
            .parse()
            .unwrap();
        assert_eq!(nonces.get(&last).as_deref(), Some("n"));
    }
}
