//! A fast HTTP upstream for benchmarks: answers every request with its body (or `hello` when it
//! has none), over keep-alive HTTP/1.1, on `127.0.0.1:$LISTEN_PORT` (default 5000). Small
//! enough that a proxy in front of it shows its own cost, not the upstream's.
//!
//! ```sh
//! cargo build --release --example fast-upstream
//! LISTEN_PORT=5000 ./target/release/examples/fast-upstream
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body = if body.is_empty() {
        Bytes::from_static(b"hello")
    } else {
        body
    };
    Ok(Response::new(Full::new(body)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("LISTEN_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("fast-upstream listening on 127.0.0.1:{port}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
