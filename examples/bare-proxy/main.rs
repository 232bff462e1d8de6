//! The floor for the proxy benchmarks: the least a hyper reverse proxy does, with nothing of
//! ours (no timeouts, metrics, header rewriting, framing check or draining). Each client
//! connection gets one upstream connection of its own, made at its first request, and every
//! request and response streams straight through. `benches/proxy_hop.sh` measures it next to
//! fwatchdog and fgateway, so their own cost shows as the gap to this one, on the same machine
//! in the same run.
//!
//! ```sh
//! cargo build --release --example bare-proxy
//! LISTEN_PORT=8080 UPSTREAM=127.0.0.1:5000 ./target/release/examples/bare-proxy
//! ```

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// One client connection's upstream connection, made at its first request.
type Slot = Arc<Mutex<Option<SendRequest<Incoming>>>>;

async fn forward(
    slot: Slot,
    upstream: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let mut held = slot.lock().await;
    if held.as_ref().is_none_or(SendRequest::is_closed) {
        let stream = TcpStream::connect(&*upstream).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        *held = Some(sender);
    }
    let sender = held.as_mut().ok_or("no upstream connection")?;
    sender.ready().await?;
    Ok(sender.send_request(req).await?)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("LISTEN_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let upstream: Arc<str> = std::env::var("UPSTREAM")
        .unwrap_or_else(|_| "127.0.0.1:5000".into())
        .into();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("bare-proxy listening on 127.0.0.1:{port}, upstream {upstream}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let upstream = Arc::clone(&upstream);
        tokio::spawn(async move {
            let slot: Slot = Arc::default();
            let service =
                service_fn(move |req| forward(Arc::clone(&slot), Arc::clone(&upstream), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
