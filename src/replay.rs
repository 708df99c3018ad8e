//! The replay copy of a request: what the retry resends after a rejection.
//!
//! Keeping it is the main per-request cost of the retry (a clone of the method, URI, headers
//! and extensions, and of the body when it can be cloned); see the hot-path bench.

use std::any::Any;

use bytes::Bytes;
use http::{Extensions, HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use http_body_util::{Empty, Full};

/// A request as it was before the token was attached.
pub(crate) struct Replay<B> {
    method: Method,
    uri: Uri,
    version: Version,
    /// The headers as a list: one allocation, where cloning the `HeaderMap` takes two (its
    /// index table too). Rebuilt into a map only for the rare resend.
    headers: Vec<(HeaderName, HeaderValue)>,
    extensions: Extensions,
    body: B,
}

impl<B: 'static> Replay<B> {
    /// Copies `request`, or `None` if its body cannot be replayed.
    pub(crate) fn capture(request: &Request<B>) -> Option<Box<Self>> {
        let body = clone_body(request.body())?;
        Some(Box::new(Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            extensions: request.extensions().clone(),
            body,
        }))
    }

    /// The request again, with a new `Authorization` value.
    pub(crate) fn into_request(self, authorization: HeaderValue) -> Request<B> {
        let mut request = Request::new(self.body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.extensions_mut() = self.extensions;
        let headers = request.headers_mut();
        headers.reserve(self.headers.len() + 1);
        // In the map's own order: each name where it first came, its values in turn.
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        headers.insert(header::AUTHORIZATION, authorization);
        request
    }
}

/// Clones the body types known to hold their whole content in memory. Any other body (a
/// stream, hyper's `Incoming`, a boxed body) is sent once and not replayed.
///
/// The checks compare `TypeId`s of a monomorphized `B`, so the compiler keeps only the
/// branch that matches.
fn clone_body<B: 'static>(body: &B) -> Option<B> {
    let body = body as &dyn Any;
    if let Some(body) = body.downcast_ref::<Full<Bytes>>() {
        return cast(body.clone());
    }
    if let Some(body) = body.downcast_ref::<Empty<Bytes>>() {
        return cast(*body);
    }
    if let Some(body) = body.downcast_ref::<Bytes>() {
        return cast(body.clone());
    }
    if let Some(body) = body.downcast_ref::<String>() {
        return cast(body.clone());
    }
    if let Some(body) = body.downcast_ref::<Vec<u8>>() {
        return cast(body.clone());
    }
    if let Some(body) = body.downcast_ref::<&'static str>() {
        return cast(*body);
    }
    if let Some(body) = body.downcast_ref::<&'static [u8]>() {
        return cast(*body);
    }
    if body.is::<()>() {
        return cast(());
    }
    None
}

/// `value` as `B`, when `T` is `B`.
fn cast<T: 'static, B: 'static>(value: T) -> Option<B> {
    let mut value = Some(value);
    (&mut value as &mut dyn Any)
        .downcast_mut::<Option<B>>()
        .and_then(Option::take)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replays<B: 'static>(body: B) -> bool {
        Replay::capture(&Request::new(body)).is_some()
    }

    #[test]
    fn in_memory_bodies_are_replayed() {
        assert!(replays(Full::new(Bytes::from_static(b"{}"))));
        assert!(replays(Empty::<Bytes>::new()));
        assert!(replays(Bytes::from_static(b"{}")));
        assert!(replays(String::from("{}")));
        assert!(replays(b"{}".to_vec()));
        assert!(replays("{}"));
        assert!(replays(b"{}".as_slice()));
        assert!(replays(()));
    }

    #[test]
    fn other_bodies_are_not_replayed() {
        struct Stream;
        assert!(!replays(Stream));
        assert!(!replays(http_body_util::combinators::BoxBody::new(
            Full::new(Bytes::new())
        )));
    }

    #[test]
    fn replay_keeps_the_request_and_sets_the_new_token() {
        let mut request = Request::post("https://api.example.com/items?x=1")
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("x-trace", "1")
            .header("accept", "text/plain")
            .body(String::from("{\"a\":1}"))
            .unwrap();
        request.extensions_mut().insert(7u32);
        let replay = Replay::capture(&request).unwrap();
        let again = (*replay).into_request(HeaderValue::from_static("Bearer new"));
        assert_eq!(again.method(), Method::POST);
        assert_eq!(again.uri(), "https://api.example.com/items?x=1");
        assert_eq!(again.headers()["content-type"], "application/json");
        let names: Vec<_> = again.headers().keys().map(|name| name.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "accept", "x-trace", "authorization"]
        );
        let accept: Vec<_> = again.headers().get_all("accept").iter().collect();
        assert_eq!(accept, ["application/json", "text/plain"]);
        assert_eq!(again.headers()[header::AUTHORIZATION], "Bearer new");
        assert_eq!(again.extensions().get::<u32>(), Some(&7));
        assert_eq!(again.body(), "{\"a\":1}");
    }
}
