//! The protected API of [`support::Api`](crate::support::Api), served over real HTTP/1.1 on
//! 127.0.0.1 (random port), recording the body of every request it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tower::ServiceExt as _;

use crate::support::Api;

/// The server; it stops (its accept loop and every open connection) when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    accept: AbortHandle,
}

impl ApiServer {
    /// Serves `api` on the current tokio runtime.
    pub async fn start(api: Api) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(listener, api, bodies.clone())).abort_handle();
        ApiServer {
            addr,
            bodies,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The body of every request received, in order of arrival.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, api: Api, bodies: Arc<Mutex<Vec<Bytes>>>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (api, bodies) = (api.clone(), bodies.clone());
        let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (api, bodies) = (api.clone(), bodies.clone());
            async move {
                // Read the whole body first, as a real API would before answering.
                let (parts, body) = request.into_parts();
                let body = body.collect().await?.to_bytes();
                bodies.lock().unwrap().push(body.clone());
                let request = http::Request::from_parts(parts, body);
                Ok::<_, hyper::Error>(api.oneshot(request).await.expect("infallible"))
            }
        });
        connections.spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
