//! The `/metrics` HTTP endpoint: hyper's HTTP/1.1 server on a single-threaded tokio runtime
//! of its own thread, so scrapes never touch a shard.
//!
//! Every connection is served concurrently, so an idle or slow client never delays a scrape;
//! at most [`MAX_CONNECTIONS`] are open at once (one more is closed at accept), each must send
//! a request head within [`HEAD_TIMEOUT`] (also between keep-alive requests), and none lives
//! longer than [`CONNECTION_LIFETIME`]. `GET` and `HEAD` of `/metrics` are answered, whatever
//! the query string; another path is 404 and another method 405.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

/// Scrape connections open at once; one more is closed as soon as it is accepted. Far above
/// what scrapers open, and bounded so that a flood of connections costs a bounded amount of
/// memory.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a connection may take to send a request head, and stay idle between requests.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a connection is kept, however busy: keep-alive scrapers reconnect.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `render()` at `/metrics` on `listener` until the process exits.
pub fn serve<F>(listener: TcpListener, render: F) -> std::io::Result<()>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let render = Arc::new(render);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let render = Arc::clone(&render);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let render = Arc::clone(&render);
                    async move { Ok::<_, Infallible>(answer(&request, &*render)) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    // A scraper may shut its side after the request (HTTP/1.0 style): it
                    // still gets the answer.
                    .half_close(true)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
                drop(slot);
            });
        }
    })
}

fn answer(request: &Request<Incoming>, render: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, render()),
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, "try /metrics\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD of /metrics are served\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}
