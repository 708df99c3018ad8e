//! [`TokenParams`]: the parameters that choose what a token is for.

use std::collections::BTreeSet;

/// What a token is asked for: scopes, audiences (`audience`) and resources (RFC 8707
/// `resource`). As the key of a keyed layer over [`ClientCredentials`](super::ClientCredentials),
/// they choose the token: a request gets a token obtained for exactly its parameters, never
/// one obtained for others.
///
/// Each is a set: the order they are given in, repeats, and the spaces in a scope string do
/// not make two parameter sets differ (`"read write"` is the scopes `read` and `write`).
///
/// ```
/// use oauth_refresh::oauth::TokenParams;
///
/// let a = TokenParams::new().scope("orders:read orders:write").audience("https://api.example.com");
/// let b = TokenParams::new().audience("https://api.example.com").scope("orders:write").scope("orders:read");
/// assert_eq!(a, b);
/// assert_ne!(a, TokenParams::new().scope("orders:read"));
/// assert_eq!(a.scopes().collect::<Vec<_>>(), ["orders:read", "orders:write"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenParams {
    scopes: BTreeSet<String>,
    audiences: BTreeSet<String>,
    resources: BTreeSet<String>,
}

impl TokenParams {
    /// No parameters: the grant's own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds scopes; a string with spaces adds each of its words.
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        self.scopes
            .extend(scope.as_ref().split_whitespace().map(str::to_owned));
        self
    }

    /// Adds an `audience`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.insert(audience.into());
        self
    }

    /// Adds a `resource` (RFC 8707).
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.insert(resource.into());
        self
    }

    /// The scopes, in order.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(String::as_str)
    }

    /// The audiences, in order.
    pub fn audiences(&self) -> impl Iterator<Item = &str> {
        self.audiences.iter().map(String::as_str)
    }

    /// The resources, in order.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.resources.iter().map(String::as_str)
    }

    /// Whether no parameter is set.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.audiences.is_empty() && self.resources.is_empty()
    }
}
