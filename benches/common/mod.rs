//! What every bench shares: the token, the request payload, and a source that hands out the
//! token without a network.
#![allow(dead_code)] // each bench uses part of it

use std::time::Duration;

use oauth_refresh::{AccessToken, BoxFuture, RefreshError, TokenRequest, TokenSet, TokenSource};

pub const ACCESS_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
pub const BEARER: &str = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
pub const PAYLOAD: &[u8] = br#"{"name":"widget","quantity":3}"#;

/// Hands out the same token, valid for an hour, so every measured request is FRESH.
pub struct InMemory;

impl TokenSource for InMemory {
    fn fetch(&self, _: TokenRequest) -> BoxFuture<'_, Result<TokenSet, RefreshError>> {
        Box::pin(async {
            let mut tokens = TokenSet::new(AccessToken::new(ACCESS_TOKEN));
            tokens.expires_in = Some(Duration::from_secs(3600));
            Ok(tokens)
        })
    }
}
