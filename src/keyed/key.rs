//! How a request names its key, and the error when it names none that works.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use http::{Extensions, HeaderMap, Method};

use crate::BoxError;

/// What a key function sees of a request: enough to derive a key from its host, path,
/// headers or extensions, the same for a tower request and a reqwest one.
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    pub(crate) host: Option<&'a str>,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The request's method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The host the request goes to, if its URL has one.
    pub fn host(&self) -> Option<&'a str> {
        self.host
    }

    /// The URL's path, without the query.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The request's headers, before the token is attached.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request's extensions (for reqwest, the middleware chain's).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

/// Header values and extensions may hold secrets: only the method, host and path show.
impl fmt::Debug for RequestHead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHead")
            .field("method", self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A keyed layer could not find the token cell for a request: the request names no key, the
/// factory knows no source for its key, or the factory failed. The request is not sent: it is
/// never sent with another key's token, nor without one.
///
/// The key itself is not in the message, since it may name a user; the application that
/// chose the key knows it.
///
/// ```
/// use oauth_refresh::keyed::KeyError;
///
/// fn why(error: &tower::BoxError) -> &'static str {
///     match error.downcast_ref::<KeyError>() {
///         Some(e) if e.is_missing() => "the request names no key",
///         Some(e) if e.is_unknown() => "no tokens for this key: sign in",
///         Some(_) => "the token store failed",
///         None => "something else",
///     }
/// }
/// # let _ = why;
/// ```
pub struct KeyError {
    kind: KeyErrorKind,
    source: Option<BoxError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyErrorKind {
    Missing,
    Unknown,
    Factory,
}

impl KeyError {
    pub(crate) fn missing() -> Self {
        KeyError {
            kind: KeyErrorKind::Missing,
            source: None,
        }
    }

    pub(crate) fn unknown() -> Self {
        KeyError {
            kind: KeyErrorKind::Unknown,
            source: None,
        }
    }

    pub(crate) fn factory(source: BoxError) -> Self {
        KeyError {
            kind: KeyErrorKind::Factory,
            source: Some(source),
        }
    }

    /// The request carried no key (no extension of the key type, or the key function gave
    /// none).
    pub fn is_missing(&self) -> bool {
        self.kind == KeyErrorKind::Missing
    }

    /// The factory answered that there is no source for the request's key.
    pub fn is_unknown(&self) -> bool {
        self.kind == KeyErrorKind::Unknown
    }

    /// The factory failed; [`source()`](Error::source) says why. The next request for the
    /// key asks the factory again.
    pub fn is_factory_failure(&self) -> bool {
        self.kind == KeyErrorKind::Factory
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            KeyErrorKind::Missing => "the request names no token key",
            KeyErrorKind::Unknown => "no token source for the request's key",
            KeyErrorKind::Factory => "the token source for the request's key could not be made",
        })
    }
}

impl fmt::Debug for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl Error for KeyError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// The application's function from a request to its key.
type KeyFn<K> = dyn Fn(&RequestHead<'_>) -> Option<K> + Send + Sync;

/// How a request names its key.
pub(crate) enum KeyFrom<K> {
    /// An extension of the key's type.
    Extension,
    /// The application's function of the request.
    Function(Arc<KeyFn<K>>),
}

impl<K> Clone for KeyFrom<K> {
    fn clone(&self) -> Self {
        match self {
            KeyFrom::Extension => KeyFrom::Extension,
            KeyFrom::Function(f) => KeyFrom::Function(f.clone()),
        }
    }
}

impl<K: Clone + Send + Sync + 'static> KeyFrom<K> {
    #[inline]
    pub(crate) fn key(&self, head: &RequestHead<'_>) -> Option<K> {
        match self {
            KeyFrom::Extension => head.extensions.get::<K>().cloned(),
            KeyFrom::Function(f) => f(head),
        }
    }

    /// The key of a tower request.
    #[inline]
    pub(crate) fn of<B>(&self, request: &http::Request<B>) -> Option<K> {
        if let KeyFrom::Extension = self {
            return request.extensions().get::<K>().cloned();
        }
        let uri = request.uri();
        self.key(&RequestHead {
            method: request.method(),
            host: uri.host(),
            path: uri.path(),
            headers: request.headers(),
            extensions: request.extensions(),
        })
    }
}
