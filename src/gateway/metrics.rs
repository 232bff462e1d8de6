//! The gateway's Prometheus metrics, with OpenFaaS's gateway metric names.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::types::FunctionStatus;
use crate::queue::QueueStats;
use crate::queue::worker::WorkerCounters;

/// Buckets for `gateway_functions_seconds` (Prometheus's defaults plus longer calls).
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// `function_name` and `code`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// The function.
    function_name: String,
    /// The status code returned to the caller.
    code: u16,
}

/// `function_name` only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    /// The function.
    pub function_name: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// What `/metrics` encodes.
    registry: Registry,
    /// `gateway_function_invocation_total{function_name,code}`.
    invocations: Family<CallLabels, Counter>,
    /// `gateway_functions_seconds{function_name,code}`.
    seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
    /// `gateway_function_invocation_started{function_name}`.
    started: Family<FunctionLabel, Counter>,
    /// `gateway_service_count{function_name}`: ready replicas.
    service_count: Family<FunctionLabel, Gauge>,
    /// Counters kept by the async worker.
    pub worker: WorkerCounters,
    /// Counters kept by the triggers.
    pub triggers: super::triggers::board::TriggerCounters,
    /// `gateway_queue_depth`: calls waiting.
    queue_depth: Gauge,
    /// `gateway_queue_oldest_age_seconds`.
    queue_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `gateway_queue_in_flight`.
    queue_in_flight: Gauge,
    /// Calls per function: running, finished, last seen (for `invocationCount` and the
    /// autoscaler).
    activity: std::sync::Mutex<std::collections::HashMap<String, Activity>>,
    /// Other gateways' calls per function, by gateway (gateways sharing a cluster publish
    /// theirs): counted in with this gateway's by [`GatewayMetrics::activity`].
    peers: std::sync::RwLock<std::collections::HashMap<String, Peer>>,
    /// The autoscaler's figures.
    pub scaling: ScalingMetrics,
    /// `gateway_upgraded_connections`: websockets (and other upgrades) open now.
    upgrades_open: Gauge,
    /// `gateway_upgraded_connections_opened_total`.
    upgrades_opened: Counter,
}

/// One function's calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    /// Calls running now (sync and async).
    pub in_flight: i64,
    /// Calls finished, whatever their status.
    pub finished: u64,
    /// Calls finished with a 2xx status (what the default autoscaler counts).
    pub succeeded: u64,
    /// When a call last started or finished.
    pub last: Option<Instant>,
}

/// One function's calls on a gateway, as gateways publish them to each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedActivity {
    /// Calls running now.
    #[serde(rename = "r")]
    pub in_flight: i64,
    /// Calls finished.
    #[serde(rename = "f")]
    pub finished: u64,
    /// Calls finished with a 2xx status.
    #[serde(rename = "s")]
    pub succeeded: u64,
    /// How long ago a call last started or finished, milliseconds, when one did.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

/// One gateway's calls per function (by the function's label).
pub type PeerActivity = std::collections::HashMap<String, SharedActivity>;

/// Another gateway's calls: as it published them last, and as they were when this gateway
/// first saw it (the autoscaler counts only what came after: a gateway seen anew must not look
/// like a burst of every call it ever served).
#[derive(Debug, Default)]
struct Peer {
    /// Its latest figures.
    now: PeerActivity,
    /// Its figures when first seen.
    first: PeerActivity,
}

/// What the autoscaler decided, and cold starts.
#[derive(Debug, Clone)]
pub struct ScalingMetrics {
    /// `gateway_service_target_load{function_name}`: load per replica aimed for.
    pub target_load: Family<FunctionLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `gateway_service_load{function_name}`: load measured.
    pub load: Family<FunctionLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `gateway_service_desired_replicas{function_name}`.
    pub desired: Family<FunctionLabel, Gauge>,
    /// `gateway_service_replicas{function_name}`: replicas asked for now.
    pub replicas: Family<FunctionLabel, Gauge>,
    /// `gateway_function_cold_starts_total{function_name}`.
    pub cold_starts: Family<FunctionLabel, Counter>,
    /// `gateway_function_cold_start_seconds{function_name}`: from the wake-up to a ready
    /// replica.
    pub cold_start_seconds: Family<FunctionLabel, Histogram, fn() -> Histogram>,
}

impl ScalingMetrics {
    /// Sets the autoscaler's gauges for `function`.
    pub fn record(&self, function: &str, target_load: f64, load: f64, desired: u64, now: u64) {
        let label = FunctionLabel {
            function_name: function.to_string(),
        };
        self.target_load.get_or_create(&label).set(target_load);
        self.load.get_or_create(&label).set(load);
        self.desired
            .get_or_create(&label)
            .set(i64::try_from(desired).unwrap_or(i64::MAX));
        self.replicas
            .get_or_create(&label)
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// Counts a cold start of `function` that took `took`.
    pub fn cold_start(&self, function: &str, took: std::time::Duration) {
        let label = FunctionLabel {
            function_name: function.to_string(),
        };
        self.cold_starts.get_or_create(&label).inc();
        self.cold_start_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<CallLabels, Counter>::default();
        let seconds =
            Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let started = Family::<FunctionLabel, Counter>::default();
        let service_count = Family::<FunctionLabel, Gauge>::default();
        registry.register(
            "gateway_function_invocation",
            "Function invocations by status code",
            invocations.clone(),
        );
        registry.register(
            "gateway_functions_seconds",
            "Function call duration in seconds",
            seconds.clone(),
        );
        registry.register(
            "gateway_function_invocation_started",
            "Function invocations started",
            started.clone(),
        );
        registry.register(
            "gateway_service_count",
            "Ready replicas per function",
            service_count.clone(),
        );
        let scaling = ScalingMetrics {
            target_load: Family::default(),
            load: Family::default(),
            desired: Family::default(),
            replicas: Family::default(),
            cold_starts: Family::default(),
            cold_start_seconds: Family::new_with_constructor(histogram),
        };
        registry.register(
            "gateway_service_target_load",
            "Load per replica the autoscaler aims for (target x target-proportion)",
            scaling.target_load.clone(),
        );
        registry.register(
            "gateway_service_load",
            "Load the autoscaler measured (in-flight calls, calls per second or millicores)",
            scaling.load.clone(),
        );
        registry.register(
            "gateway_service_desired_replicas",
            "Replicas the autoscaler wants",
            scaling.desired.clone(),
        );
        registry.register(
            "gateway_service_replicas",
            "Replicas asked for",
            scaling.replicas.clone(),
        );
        registry.register(
            "gateway_function_cold_starts",
            "Calls that found their function at zero replicas and started one",
            scaling.cold_starts.clone(),
        );
        registry.register(
            "gateway_function_cold_start_seconds",
            "Time from a cold start's wake-up to a ready replica",
            scaling.cold_start_seconds.clone(),
        );
        let upgrades_open = Gauge::default();
        let upgrades_opened = Counter::default();
        registry.register(
            "gateway_upgraded_connections",
            "Upgraded connections (websockets) tunnelled to functions now",
            upgrades_open.clone(),
        );
        registry.register(
            "gateway_upgraded_connections_opened",
            "Upgraded connections (websockets) tunnelled to functions so far",
            upgrades_opened.clone(),
        );
        let worker = WorkerCounters::default();
        registry.register(
            "gateway_async_retries",
            "Asynchronous call attempts that will be retried",
            worker.retries.clone(),
        );
        registry.register(
            "gateway_async_dead_lettered",
            "Asynchronous calls moved to the dead-letter set",
            worker.dead_lettered.clone(),
        );
        registry.register(
            "gateway_async_callback_failures",
            "Failed callback delivery attempts",
            worker.callback_failures.clone(),
        );
        let triggers = super::triggers::board::TriggerCounters::default();
        registry.register(
            "gateway_trigger_firings",
            "Calls queued by a trigger (schedule) of this gateway",
            triggers.firings.clone(),
        );
        registry.register(
            "gateway_trigger_failures",
            "Trigger firings that could not be queued, or whose call failed",
            triggers.failures.clone(),
        );
        registry.register(
            "gateway_trigger_missed",
            "Trigger ticks that did not run (no gateway running, or the previous firing still running)",
            triggers.missed.clone(),
        );
        let queue_depth = Gauge::default();
        let queue_oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let queue_in_flight = Gauge::default();
        registry.register(
            "gateway_queue_depth",
            "Asynchronous calls waiting to run",
            queue_depth.clone(),
        );
        registry.register(
            "gateway_queue_oldest_age_seconds",
            "Age of the oldest waiting asynchronous call",
            queue_oldest.clone(),
        );
        registry.register(
            "gateway_queue_in_flight",
            "Asynchronous calls running",
            queue_in_flight.clone(),
        );
        GatewayMetrics {
            registry,
            invocations,
            seconds,
            started,
            service_count,
            worker,
            triggers,
            queue_depth,
            queue_oldest,
            queue_in_flight,
            activity: std::sync::Mutex::default(),
            peers: std::sync::RwLock::default(),
            scaling,
            upgrades_open,
            upgrades_opened,
        }
    }

    /// Counts an upgraded connection opened.
    pub fn upgrade_opened(&self) {
        self.upgrades_opened.inc();
    }

    /// Sets the number of upgraded connections open.
    pub fn upgrades_open(&self, open: usize) {
        self.upgrades_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// The calls of `function` so far.
    pub fn activity(&self, function: &str) -> Activity {
        self.summed(function, true)
    }

    /// This gateway's and the others' calls to `function`; `since_seen`: the others' counts
    /// from when this gateway first saw them.
    fn summed(&self, function: &str, since_seen: bool) -> Activity {
        let mut sum = self
            .activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(function)
            .copied()
            .unwrap_or_default();
        let peers = self
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        for peer in peers.values() {
            let Some(a) = peer.now.get(function) else {
                continue;
            };
            let first = peer
                .first
                .get(function)
                .filter(|_| since_seen)
                .copied()
                .unwrap_or_default();
            sum.in_flight += a.in_flight;
            sum.finished += a.finished.saturating_sub(first.finished);
            sum.succeeded += a.succeeded.saturating_sub(first.succeeded);
            let last = a
                .idle_ms
                .and_then(|ms| now.checked_sub(std::time::Duration::from_millis(ms)));
            sum.last = sum.last.max(last);
        }
        sum
    }

    /// This gateway's own calls per function, to publish to the others.
    pub fn own_activity(&self) -> PeerActivity {
        let now = Instant::now();
        self.activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(function, a)| {
                (
                    function.clone(),
                    SharedActivity {
                        in_flight: a.in_flight,
                        finished: a.finished,
                        succeeded: a.succeeded,
                        idle_ms: a.last.map(|t| {
                            u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX)
                        }),
                    },
                )
            })
            .collect()
    }

    /// Replaces the other gateways' calls (by gateway id) with what they published last.
    pub fn set_peers(&self, latest: std::collections::HashMap<String, PeerActivity>) {
        let mut peers = self
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.retain(|id, _| latest.contains_key(id));
        for (id, now) in latest {
            let peer = peers.entry(id).or_insert_with(|| Peer {
                first: now.clone(),
                ..Peer::default()
            });
            peer.now = now;
        }
    }

    fn touch(&self, function: &str, change: impl FnOnce(&mut Activity)) {
        let mut all = self
            .activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Calls of a known function (all but its first) allocate nothing here.
        let entry = match all.get_mut(function) {
            Some(entry) => entry,
            None => all.entry(function.to_string()).or_default(),
        };
        change(entry);
        entry.last = Some(Instant::now());
    }

    /// Finished calls to `function`, sync and async, whatever their status: the same count as
    /// `gateway_function_invocation_total` summed over codes.
    pub fn invocation_count(&self, function: &str) -> u64 {
        self.summed(function, false).finished
    }

    /// Fills in `invocationCount` of function statuses.
    pub fn fill_counts(&self, statuses: &mut [super::types::FunctionStatus]) {
        for status in statuses {
            let label = super::types::display_name(&status.name, &status.namespace);
            status.invocation_count = self.invocation_count(&label) as f64;
        }
    }

    /// Counts a call to `function` as started; returns when it started.
    pub fn call_started(&self, function: &str) -> Instant {
        self.started
            .get_or_create(&FunctionLabel {
                function_name: function.to_string(),
            })
            .inc();
        self.touch(function, |a| a.in_flight += 1);
        Instant::now()
    }

    /// Records a finished call.
    pub fn call_finished(&self, function: &str, code: u16, started: Instant) {
        let labels = CallLabels {
            function_name: function.to_string(),
            code,
        };
        self.invocations.get_or_create(&labels).inc();
        self.touch(function, |a| {
            a.in_flight -= 1;
            a.finished += 1;
            a.succeeded += u64::from((200..300).contains(&code));
        });
        self.seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    /// The text exposition, with `gateway_service_count` taken from `functions` and the queue
    /// gauges from `queue`.
    pub fn encode(
        &self,
        functions: &[FunctionStatus],
        queue: &QueueStats,
    ) -> Result<String, std::fmt::Error> {
        self.queue_depth
            .set(i64::try_from(queue.depth).unwrap_or(i64::MAX));
        self.queue_oldest.set(queue.oldest_age);
        self.queue_in_flight
            .set(i64::try_from(queue.in_flight).unwrap_or(i64::MAX));
        self.service_count.clear();
        for f in functions {
            self.service_count
                .get_or_create(&FunctionLabel {
                    function_name: super::types::display_name(&f.name, &f.namespace),
                })
                .set(i64::try_from(f.available_replicas).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
