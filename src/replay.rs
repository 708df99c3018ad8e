//! The replay copy of a request: what the retry resends after a rejection.
//!
//! Keeping it is the main per-request cost of the retry (a clone of the method, URI, headers
//! and extensions, and of the body when it can be cloned); see the hot-path bench.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};
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

/// The body types a layer value was taught to replay, beyond the crate's own list: one
/// function per type, looked up by `TypeId` only for a body the list does not know.
#[derive(Clone, Default)]
pub(crate) struct Replayers(Arc<[(TypeId, Arc<dyn Any + Send + Sync>)]>);

/// How a user's function is kept: behind `Any`, so that one list holds every body type.
type CloneFn<B> = Box<dyn Fn(&B) -> Option<B> + Send + Sync>;

impl Replayers {
    /// These replayers, with `clone` for bodies of type `B` (replacing an earlier one).
    pub(crate) fn with<B: 'static>(
        &self,
        clone: impl Fn(&B) -> Option<B> + Send + Sync + 'static,
    ) -> Self {
        let clone: CloneFn<B> = Box::new(clone);
        let id = TypeId::of::<B>();
        let entry: (TypeId, Arc<dyn Any + Send + Sync>) = (id, Arc::new(clone));
        let others = self.0.iter().filter(|(other, _)| *other != id).cloned();
        Replayers(others.chain(std::iter::once(entry)).collect())
    }

    fn clone_body<B: 'static>(&self, body: &B) -> Option<B> {
        let (_, clone) = self.0.iter().find(|(id, _)| *id == TypeId::of::<B>())?;
        clone.downcast_ref::<CloneFn<B>>()?(body)
    }
}

impl fmt::Debug for Replayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replayers")
            .field("types", &self.0.len())
            .finish()
    }
}

impl<B: 'static> Replay<B> {
    /// Copies `request`, or `None` if its body cannot be replayed: neither the crate's list
    /// nor `replayers` knows its type, or the function for it declined. The list always
    /// copies what it knows.
    pub(crate) fn capture(request: &Request<B>, replayers: &Replayers) -> Option<Self> {
        let body = clone_body(request.body()).or_else(|| replayers.clone_body(request.body()))?;
        Some(Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: copy_headers(request.headers()),
            extensions: request.extensions().clone(),
            body,
        })
    }

    /// Another copy, for a request that may be resent twice (a DPoP request: once for a
    /// nonce, once for a rejected token). `None` if the body's function declines.
    pub(crate) fn duplicate(&self, replayers: &Replayers) -> Option<Self> {
        let body = clone_body(&self.body).or_else(|| replayers.clone_body(&self.body))?;
        Some(Replay {
            method: self.method.clone(),
            uri: self.uri.clone(),
            version: self.version,
            headers: self.headers.clone(),
            extensions: self.extensions.clone(),
            body,
        })
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

/// The headers as a list, sized once; an empty map costs no walk at all.
#[inline]
fn copy_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    if headers.is_empty() {
        return Vec::new();
    }
    let mut list = Vec::with_capacity(headers.len());
    list.extend(
        headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    list
}

/// Clones the body types known to hold their whole content in memory. Any other body (a
/// stream, hyper's `Incoming`, a boxed body) is sent once and not replayed, unless the layer
/// was taught its type ([`RefreshLayer::replay_body`](crate::RefreshLayer::replay_body)).
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
        Replay::capture(&Request::new(body), &Replayers::default()).is_some()
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
    fn a_replayer_teaches_a_body_type_and_may_decline() {
        #[derive(Debug, PartialEq)]
        struct Upload(Option<&'static str>);
        let replayers =
            Replayers::default().with(|body: &Upload| body.0.map(|text| Upload(Some(text))));
        let again = |body| Replay::capture(&Request::new(body), &replayers).map(|r| r.body);
        assert_eq!(again(Upload(Some("x"))), Some(Upload(Some("x"))));
        assert_eq!(again(Upload(None)), None, "the function declined");
        assert!(
            Replay::capture(&Request::new(Upload(Some("x"))), &Replayers::default()).is_none(),
            "untaught, as before"
        );
        // A later function for the same type replaces the earlier one.
        let replayers = replayers.with(|_: &Upload| None);
        assert!(Replay::capture(&Request::new(Upload(Some("x"))), &replayers).is_none());
        assert_eq!(replayers.0.len(), 1);
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
        let replay = Replay::capture(&request, &Replayers::default()).unwrap();
        let again = replay.into_request(HeaderValue::from_static("Bearer new"));
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
