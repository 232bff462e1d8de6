//! A real three-node NATS cluster for the JetStream queue's tests: `nats-server -js` processes
//! on free loopback ports, routed to each other, each with its own store, started, killed and
//! restarted (same ports, same store) by the test; and what the tests ask the cluster (which
//! node leads a stream, whether every replica is current).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::{DEADLINE, eventually_async, free_port, get, nats_server_bin, signal_child};

/// The streams and consumers the gateway's queue keeps in the cluster (default names).
pub const STREAMS: [&str; 5] = [
    "faas-request",
    "KV_faas-request-calls",
    "faas-request-dlq",
    "faas-request-callback",
    "OBJ_faas-request-results",
];

/// One node.
struct Node {
    /// The running server, if it is up.
    child: Option<Child>,
    /// Its name in the cluster (`n0`...).
    name: String,
    /// Client port.
    port: u16,
    /// Monitoring port (`/healthz`).
    monitor: u16,
    /// Route port.
    route: u16,
    /// Its JetStream store.
    store: PathBuf,
}

/// Three routed `nats-server -js` processes.
pub struct Cluster {
    /// The nodes.
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts three nodes storing under `dir` and waits until each is healthy.
    pub async fn start(dir: &Path) -> Cluster {
        let mut cluster = Cluster::first(dir).await;
        cluster.start_rest().await;
        cluster
    }

    /// Starts only the first node, storing under `dir`, and waits until it listens: alone, it
    /// has no JetStream quorum (a cluster still starting). [`Cluster::start_rest`] starts the
    /// others.
    pub async fn first(dir: &Path) -> Cluster {
        let mut cluster = Cluster {
            nodes: (0..3)
                .map(|i| Node {
                    child: None,
                    name: format!("n{i}"),
                    port: free_port(),
                    monitor: free_port(),
                    route: free_port(),
                    store: dir.join(format!("n{i}")),
                })
                .collect(),
        };
        cluster.spawn(0);
        cluster.listening(0).await;
        cluster
    }

    /// Starts the nodes that were never started, and waits until every node is healthy.
    pub async fn start_rest(&mut self) {
        for i in 1..3 {
            if self.nodes[i].child.is_none() {
                self.spawn(i);
            }
        }
        for i in 0..3 {
            self.healthy(i).await;
        }
    }

    /// How many clients node `i` has connected.
    pub async fn clients(&self, i: usize) -> u64 {
        let monitor = std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[i].monitor));
        let connz: serde_json::Value = serde_json::from_str(&get(monitor, "/connz").await.text())
            .unwrap_or_else(|e| panic!("/connz: {e}"));
        connz["num_connections"].as_u64().unwrap_or(0)
    }

    /// Every client URL, comma-separated, as `--queue` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i` (it must be down).
    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.route))
            .collect();
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} is already running", node.name);
        std::fs::create_dir_all(&node.store).unwrap();
        let child = Command::new(nats_server_bin())
            .args(["-js", "-n", &node.name, "-a", "127.0.0.1"])
            .args([
                "-p",
                &node.port.to_string(),
                "-m",
                &node.monitor.to_string(),
            ])
            .args(["--cluster_name", "fgw-test"])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", node.route))
            .arg("--routes")
            .arg(routes.join(","))
            .arg("-sd")
            .arg(&node.store)
            .arg("-l")
            .arg(node.store.with_extension("log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        node.child = Some(child);
    }

    /// Waits until node `i` says it is healthy (JetStream current).
    async fn healthy(&self, i: usize) {
        let node = &self.nodes[i];
        let monitor = std::net::SocketAddr::from(([127, 0, 0, 1], node.monitor));
        eventually_async(&format!("{} healthy", node.name), DEADLINE * 3, || async {
            let up = tokio::net::TcpStream::connect(monitor).await.is_ok();
            (up && get(monitor, "/healthz").await.status() == 200).then_some(())
        })
        .await;
    }

    /// SIGKILLs node `i`.
    pub async fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i]
            .child
            .take()
            .expect("the node is down already");
        signal_child(&child, Signal::SIGKILL);
        crate::harness::wait_child(&mut child, "nats-server", DEADLINE).await;
    }

    /// Starts node `i` again on its ports and store, and waits until it listens (catching up
    /// is [`Cluster::all_current`]'s to wait for).
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.listening(i).await;
    }

    /// Waits until node `i` takes client connections.
    async fn listening(&self, i: usize) {
        let port = self.nodes[i].port;
        let what = format!("{} listening", self.nodes[i].name);
        eventually_async(&what, DEADLINE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
    }

    /// A JetStream client of the cluster (any node that is up).
    pub async fn client(&self) -> async_nats::jetstream::Context {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect();
        let client = async_nats::ConnectOptions::new()
            .connect(urls.as_slice())
            .await
            .unwrap();
        async_nats::jetstream::new(client)
    }

    /// The node leading `stream`, once it has a leader.
    pub async fn leader(&self, stream: &str) -> usize {
        let js = self.client().await;
        let name = eventually_async(&format!("a leader of {stream}"), DEADLINE * 2, || async {
            cluster_of(&js, stream).await?.leader
        })
        .await;
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("unknown leader {name}"))
    }

    /// Moves `stream`'s leadership to node `i` (asking the leader to step down until the
    /// election picks it).
    pub async fn make_leader(&self, stream: &str, i: usize) {
        let js = self.client().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let leader = self.leader(stream).await;
            if leader == i {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "n{i} never became the leader of {stream}"
            );
            // A refusal (an election under way) is asked again on the next turn.
            let _ = js
                .client()
                .request(
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                    bytes::Bytes::new(),
                )
                .await;
            // The next leader is elected in a few seconds; `leader` waits for it.
            let old = &self.nodes[leader].name;
            for _ in 0..100 {
                match cluster_of(&js, stream).await.and_then(|c| c.leader) {
                    Some(l) if l != *old => break,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }

    /// Waits until every stream of the queue has a leader and two current, online followers.
    pub async fn all_current(&self) {
        let js = self.client().await;
        for stream in STREAMS {
            eventually_async(
                &format!("{stream} with 3 current replicas"),
                Duration::from_secs(180),
                || async {
                    let info = cluster_of(&js, stream).await?;
                    (info.leader.is_some()
                        && info.replicas.len() == 2
                        && info.replicas.iter().all(|p| p.current && !p.offline))
                    .then_some(())
                },
            )
            .await;
        }
    }
}

/// `stream`'s cluster information, when its leader answers within a second.
async fn cluster_of(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Option<async_nats::jetstream::stream::ClusterInfo> {
    let ask = async {
        let stream = js.get_stream(stream).await.ok()?;
        stream.get_info().await.ok()?.cluster
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
