//! [`KeyedRefreshLayer`] as a [`reqwest_middleware::Middleware`] (feature `reqwest`): the
//! request's key picks the cell, then the request goes as through
//! [`RefreshLayer`](crate::RefreshLayer)'s middleware.

use std::hash::Hash;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Error, Middleware, Next};

use super::key::{KeyError, KeyFrom, RequestHead};
use super::layer::KeyedRefreshLayer;

#[async_trait::async_trait]
impl<K> Middleware for KeyedRefreshLayer<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        // Credentials of its own, or none asked for: no key needed.
        if crate::reqwest::passes_through(&request, extensions) {
            return next.run(request, extensions).await;
        }
        let key = match &self.keys {
            KeyFrom::Extension => extensions.get::<K>().cloned(),
            keys => {
                let url = request.url();
                keys.key(&RequestHead {
                    method: request.method(),
                    host: url.host_str(),
                    path: url.path(),
                    headers: request.headers(),
                    extensions,
                })
            }
        };
        let key = key.ok_or_else(|| Error::middleware(KeyError::missing()))?;
        let cell = match self.cells.get(&key) {
            Some(cell) => cell,
            None => Box::pin(self.cells.resolve(&key))
                .await
                .map_err(Error::middleware)?,
        };
        crate::reqwest::send(&cell, &self.options, request, extensions, next).await
    }
}
