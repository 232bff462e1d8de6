//! A real callback receiver for asynchronous-call tests: an HTTP server that records every
//! request it gets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::harness::DEADLINE;

/// One received callback.
#[derive(Debug, Clone)]
pub struct Callback {
    /// Request headers.
    pub headers: http::HeaderMap,
    /// Request body.
    pub body: Bytes,
}

impl Callback {
    /// A header as text.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    }
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it got.
    pub got: Arc<Mutex<Vec<Callback>>>,
    /// Stops it.
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on `port` (0 for any) of the loopback address.
    pub async fn start(port: u16) -> Receiver {
        Receiver::start_on(std::net::Ipv4Addr::LOCALHOST.into(), port).await
    }

    /// Starts a receiver on `ip`, `port` (0 for any): an address others than this machine's
    /// processes can reach.
    pub async fn start_on(ip: std::net::IpAddr, port: u16) -> Receiver {
        let listener = TcpListener::bind((ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Callback>>> = Arc::default();
        let store = Arc::clone(&got);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let store = Arc::clone(&store);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            store.lock().unwrap().push(Callback {
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"thanks"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, got, task }
    }

    /// The callback URL for this receiver.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Everything received so far.
    pub fn all(&self) -> Vec<Callback> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` callbacks arrived; returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Callback> {
        let end = Instant::now() + DEADLINE;
        loop {
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < end,
                "only {} of {n} callbacks arrived",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
