//! The NATS JetStream backend: many gateways and workers, on many machines, share one queue.
//!
//! Layout on the server (names derive from the stream name, `faas-request` by default):
//!
//! - stream `faas-request` (work queue, file storage), subjects `faas-request.<function>`: one
//!   message per call, published with `Nats-Msg-Id` = call id and a tag of its status record
//!   (`<id>#<tag>`), so the server drops a repeat inside its duplicate window, and a call id
//!   used again after its first enqueue failed and was undone is not taken for a repeat of
//!   the undone message (which the workers drop). One durable pull consumer, `faas-workers`,
//!   is shared by every worker: explicit acks, `ack_wait` = the lease.
//! - key-value bucket `faas-request-calls`: one status record per call (`c.<id>`, or
//!   `x.<hex id>` for ids with characters keys cannot hold) and one entry per idempotency key
//!   (`i.<sha256>`), kept for the retention period. Every change to a record is a
//!   compare-and-set on its revision, and every ack or nak of a message follows a successful
//!   one: JetStream acks are not tied to one delivery, so a worker that lost its lease must
//!   not be able to ack the call away from its new owner.
//! - stream `faas-request-dlq`: a copy of each dead-lettered request (subject per call), kept
//!   until it is redriven or purged.
//! - stream `faas-request-callback` (work queue) with consumer `faas-callbacks`: one message
//!   per pending callback carrying the call's outcome; bodies too large for one message go to
//!   the object store `faas-request-results`.
//!
//! Leases: a fetched message is the worker's until the consumer's `ack_wait`; `in_progress`
//! acks extend it while the call runs. A caller asking for another lease length gets it with
//! a delayed nak, which the server treats the same way (redelivery when it runs out). Retries
//! are delayed naks (the delay the worker chose, `Retry-After` included); attempts are counted
//! in the status record, and the worker dead-letters a call itself (term + a copy in the
//! dead-letter stream) when its retries are exhausted, so the consumer has no `max_deliver`
//! (hand-backs and lease take-overs count as deliveries too) and no server-side backoff (on
//! NATS 2.9 it would replace `ack_wait`, the lease, with its first step).
//!
//! A record also names its call's live message (its stream sequence, once a worker has seen
//! it): a second message for the same call (republished by a retried enqueue after the
//! duplicate window, or a redrive published twice) is dropped, never run beside the first.
//! Calls fetched for a function at its concurrency limit are handed back for
//! 100 ms, and a lease whose whole fetch was handed back fetches again, in growing batches (up
//! to 1024 messages), so that a backlog of one function cannot fill every fetch and
//! starve the others. The hand-back is short because other workers, with room for that
//! function, do not see those calls meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, Message,
    consumer::{self, PullConsumer},
    kv,
    message::PublishMessage as Publish,
    object_store::ObjectStore,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{
    BoxFuture, CallState, CallStatus, CallbackJob, Cancelled, Enqueued, Leased, Outcome, Queue,
    QueueError, QueueRequest, QueueStats, unix_ms,
};

/// Settings of the JetStream queue.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// Server URL(s), comma-separated: `nats://host:4222`.
    pub url: String,
    /// Name of the request stream; the other names derive from it.
    pub stream: String,
    /// Stream replicas (1 for a single server, 3 or 5 in a cluster).
    pub replicas: usize,
    /// How long status records and idempotency keys are kept.
    pub retention: Duration,
    /// Most result bytes a status record shows.
    pub result_cap: usize,
    /// The consumer's `ack_wait` when this process creates it: the workers' lease.
    pub lease: Duration,
    /// How long start-up waits for the server.
    pub connect_timeout: Duration,
}

/// Most dead letters listed at once (the oldest).
const DEAD_LETTER_PAGE: usize = 1000;

/// Longest delay handed to the server (its durations are signed 64-bit nanoseconds).
const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Compare-and-set attempts before an update gives up.
const CAS_ATTEMPTS: usize = 32;

/// How long a call for a function at its limit is handed back for, so the next fetch reaches
/// other functions' calls first.
const HAND_BACK: Duration = Duration::from_millis(100);

/// Largest batch a lease fetches while looking past handed-back calls.
const SCAN_BATCH: usize = 128;

/// Most messages one lease looks at while looking past handed-back calls.
const SCAN_LIMIT: usize = 1024;

/// Longest a fetch of waiting messages may take (it normally ends within milliseconds: the
/// server answers a no-wait pull at once).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the clean-up of a failed enqueue may wait for the server.
const FORGET_WITHIN: Duration = Duration::from_secs(60);

/// Room left in a message for headers and JSON framing.
const FRAMING: usize = 4096;

/// The server failed or cannot be reached.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::Unavailable(Box::new(e))
}

/// An error from the client's boxed error type.
fn boxed(e: async_nats::Error) -> QueueError {
    QueueError::Unavailable(e)
}

/// Why the queue could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server could not be reached before the deadline.
    #[error("cannot connect to NATS at {url} within {timeout:?}")]
    Connect {
        /// Where.
        url: String,
        /// How long start-up waited.
        timeout: Duration,
        /// The last error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A stream or consumer could not be created or read.
    #[error("cannot set up JetStream {what} {name:?}")]
    JetStream {
        /// Stream, consumer, bucket.
        what: &'static str,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
    /// An existing stream's configuration conflicts with what this process needs.
    #[error(
        "JetStream stream {name:?} exists with {field} = {found}, but this gateway needs {wanted}; \
         change the stream (nats stream edit) or use another --nats-stream"
    )]
    Conflict {
        /// The stream.
        name: String,
        /// The setting.
        field: &'static str,
        /// What the server has.
        found: String,
        /// What this process needs.
        wanted: String,
    },
    /// The stream name is not usable.
    #[error(
        "invalid --nats-stream {0:?}: use letters, digits, - and _ (it names streams, subjects and a bucket)"
    )]
    Name(String),
}

/// Names of everything on the server, from the stream name.
#[derive(Debug, Clone)]
struct Names {
    /// Request stream and subject prefix.
    requests: String,
    /// The shared worker consumer.
    workers: String,
    /// Dead-letter stream and subject prefix.
    dlq: String,
    /// Callback stream and subject prefix.
    callbacks: String,
    /// The callback consumer.
    dispatchers: String,
    /// Key-value bucket of status records.
    bucket: String,
    /// Object store of large callback bodies.
    results: String,
}

impl Names {
    fn new(stream: &str) -> Result<Self, SetupError> {
        let ok = !stream.is_empty()
            && stream.len() <= 200
            && stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(SetupError::Name(stream.to_string()));
        }
        let base = stream.strip_suffix("-request").unwrap_or(stream);
        Ok(Names {
            requests: stream.to_string(),
            workers: format!("{base}-workers"),
            dlq: format!("{stream}-dlq"),
            callbacks: format!("{stream}-callback"),
            dispatchers: format!("{base}-callbacks"),
            bucket: format!("{stream}-calls"),
            results: format!("{stream}-results"),
        })
    }
}

/// The key of a call's status record.
fn record_key(call_id: &str) -> String {
    if !call_id.is_empty()
        && call_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        format!("c.{call_id}")
    } else {
        format!("x.{}", hex::encode(call_id))
    }
}

/// The call id a record key (or the subject suffix built from one) stands for.
fn call_id_from_key(key: &str) -> Option<String> {
    if let Some(id) = key.strip_prefix("c.") {
        return Some(id.to_string());
    }
    let bytes = hex::decode(key.strip_prefix("x.")?).ok()?;
    String::from_utf8(bytes).ok()
}

/// The key of an idempotency key's entry.
fn idem_key(key: &str) -> String {
    format!("i.{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A call's status record, as stored in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    call_id: String,
    function: String,
    state: CallState,
    attempts: u32,
    #[serde(default)]
    dead: bool,
    enqueued_at: u64,
    retry_since: u64,
    #[serde(default)]
    started_at: Option<u64>,
    #[serde(default)]
    finished_at: Option<u64>,
    #[serde(default)]
    next_attempt_at: Option<u64>,
    /// The worker holding the lease, while running.
    #[serde(default)]
    owner: Option<String>,
    /// The request message's stream sequence, once a worker has seen it.
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    last_error: Option<String>,
    /// Result head (up to the cap), base64.
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    result_truncated: bool,
    #[serde(default)]
    callback_url: Option<String>,
    /// none, pending, delivered, failed.
    callback: String,
    #[serde(default)]
    callback_attempts: u32,
    /// When the pending callback is due (Unix ms).
    #[serde(default)]
    callback_due: Option<u64>,
    /// Why the last callback delivery failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    callback_error: Option<String>,
    /// The pending callback's message sequence in the callback stream.
    #[serde(default)]
    callback_seq: Option<u64>,
    /// The object holding the pending callback's body, when it did not fit in the message.
    #[serde(default)]
    callback_object: Option<String>,
    /// Times redriven from the dead-letter stream.
    #[serde(default)]
    redrives: u32,
    /// `Nats-Msg-Id` of the request message: the call id and a tag of this record (a record
    /// stored again after an undone enqueue has another).
    #[serde(default)]
    msg_id: Option<String>,
}

impl Record {
    fn queued(request: &QueueRequest) -> Self {
        Record {
            call_id: request.call_id.clone(),
            function: request.function.clone(),
            state: CallState::Queued,
            attempts: 0,
            dead: false,
            enqueued_at: request.enqueued_at,
            retry_since: request.enqueued_at,
            started_at: None,
            finished_at: None,
            next_attempt_at: None,
            owner: None,
            seq: None,
            status_code: None,
            last_error: None,
            result: None,
            result_truncated: false,
            callback_url: request.callback_url.clone(),
            callback: "none".into(),
            callback_attempts: 0,
            callback_error: None,
            callback_due: None,
            callback_seq: None,
            callback_object: None,
            redrives: 0,
            msg_id: Some(format!(
                "{}#{}",
                request.call_id,
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )),
        }
    }

    /// The `Nats-Msg-Id` its request message is published with.
    fn msg_id(&self) -> &str {
        self.msg_id.as_deref().unwrap_or(&self.call_id)
    }

    /// Whether `owner` holds the lease.
    fn held_by(&self, owner: &str) -> bool {
        self.state == CallState::Running && self.owner.as_deref() == Some(owner)
    }

    fn status(&self) -> CallStatus {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = self.result.as_ref().and_then(|r| b64.decode(r).ok());
        let (text, base64) = match bytes {
            None => (None, None),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(e) => (None, Some(b64.encode(e.as_bytes()))),
            },
        };
        CallStatus {
            call_id: self.call_id.clone(),
            function: self.function.clone(),
            state: self.state,
            attempts: self.attempts,
            dead_letter: self.dead,
            status_code: self.status_code,
            last_error: self.last_error.clone(),
            enqueued_at: rfc3339(self.enqueued_at),
            started_at: self.started_at.map(rfc3339),
            finished_at: self.finished_at.map(rfc3339),
            next_attempt_at: (self.state == CallState::Retrying)
                .then_some(self.next_attempt_at)
                .flatten()
                .map(rfc3339),
            result: text,
            result_base64: base64,
            result_truncated: self.result_truncated,
            callback: self.callback.clone(),
            callback_attempts: self.callback_attempts,
            callback_error: self.callback_error.clone(),
        }
    }
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A pending callback, as carried in the callback stream.
#[derive(Debug, Serialize, Deserialize)]
struct CallbackMessage {
    call_id: String,
    function: String,
    url: String,
    /// The attempt that produced the outcome (a stale message from a lost lease has a lower
    /// one than the record and is dropped).
    attempts: u32,
    status: u16,
    headers: Vec<(String, String)>,
    /// The body, base64, when it fits in the message.
    #[serde(default)]
    body: Option<String>,
    /// The object holding the body otherwise.
    #[serde(default)]
    body_object: Option<String>,
    duration: f64,
    #[serde(default)]
    error: Option<String>,
}

/// A record and the revision it was read at.
struct Versioned {
    record: Record,
    revision: u64,
}

/// What the bucket holds under a key: a value (raw with its revision, or a record), or none.
enum Stored<T> {
    /// The latest value.
    Found(T),
    /// A delete or purge marker. For a record: the enqueue that stored it failed and undid it
    /// (its client heard "unavailable"), or the dead letter was purged.
    Removed,
    /// Nothing: never stored, or expired with the retention.
    Missing,
}

/// What a record change decided.
enum Step<T> {
    /// Store the edited record, then report `T`.
    Write(T),
    /// Leave the record as it is and report `T`.
    Keep(T),
}

/// A leased request message.
struct Held {
    owner: String,
    message: Message,
    /// The lease length the owner asked for.
    lease: Duration,
    /// The record as this process last wrote it (saves a read when the call is settled; a
    /// stale one only fails its compare-and-set).
    current: Versioned,
}

/// The JetStream queue.
pub struct JetStreamQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    requests: stream::Stream,
    workers: PullConsumer,
    dlq: stream::Stream,
    callbacks: stream::Stream,
    dispatchers: PullConsumer,
    kv: kv::Store,
    results: ObjectStore,
    config: JetStreamConfig,
    /// The consumer's `ack_wait`.
    ack_wait: Duration,
    /// Request messages leased by this process, by call id.
    held: Mutex<HashMap<String, Held>>,
    /// Callback messages claimed by this process, by call id.
    claimed: Mutex<HashMap<String, Message>>,
    /// Records of calls this process finished whose first callback it is delivering.
    settled: Mutex<HashMap<String, Versioned>>,
}

impl std::fmt::Debug for JetStreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamQueue")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether an existing stream can serve: the settings that matter must match.
/// `allow_direct` is compared unless `direct_either`: a stream this process reads only from
/// its leader serves with either setting.
fn check_stream(
    found: &stream::Config,
    wanted: &stream::Config,
    direct_either: bool,
) -> Result<(), SetupError> {
    let conflict = |field, found_value: String, wanted_value: String| SetupError::Conflict {
        name: wanted.name.clone(),
        field,
        found: found_value,
        wanted: wanted_value,
    };
    if found.retention != wanted.retention {
        return Err(conflict(
            "retention",
            format!("{:?}", found.retention),
            format!("{:?}", wanted.retention),
        ));
    }
    if found.storage != wanted.storage {
        return Err(conflict(
            "storage",
            format!("{:?}", found.storage),
            format!("{:?}", wanted.storage),
        ));
    }
    if found.num_replicas.max(1) != wanted.num_replicas.max(1) {
        return Err(conflict(
            "replicas",
            found.num_replicas.to_string(),
            wanted.num_replicas.to_string(),
        ));
    }
    if let Some(missing) = wanted.subjects.iter().find(|s| !found.subjects.contains(s)) {
        return Err(conflict(
            "subjects",
            format!("{:?}", found.subjects),
            format!("{missing:?} among them"),
        ));
    }
    if found.max_age != wanted.max_age {
        return Err(conflict(
            "max_age",
            format!("{:?}", found.max_age),
            format!("{:?} (the retention)", wanted.max_age),
        ));
    }
    // Direct gets may be answered by a lagging replica: a stream read with them (the object
    // store) must not have them.
    if !direct_either && found.allow_direct != wanted.allow_direct {
        return Err(conflict(
            "allow_direct",
            found.allow_direct.to_string(),
            wanted.allow_direct.to_string(),
        ));
    }
    // The server writes "no limit" as -1 where a request may say 0.
    let limit = |n: i64| (n > 0).then_some(n);
    if limit(found.max_messages_per_subject) != limit(wanted.max_messages_per_subject) {
        return Err(conflict(
            "max_msgs_per_subject",
            found.max_messages_per_subject.to_string(),
            wanted.max_messages_per_subject.to_string(),
        ));
    }
    Ok(())
}

/// Creates `config`'s stream, or checks the one that exists.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    direct_either: bool,
) -> Result<stream::Stream, SetupError> {
    let setup = |source: async_nats::Error| SetupError::JetStream {
        what: "stream",
        name: config.name.clone(),
        source,
    };
    for _ in 0..3 {
        match js.get_stream(&config.name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| setup(e.into()))?;
                check_stream(&info.config, &config, direct_either)?;
                return Ok(existing);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(_)
                ) =>
            {
                // Not found (or another JetStream error, which creating reports better).
            }
            Err(e) => return Err(setup(e.into())),
        }
        match js.create_stream(config.clone()).await {
            Ok(created) => return Ok(created),
            // Another process created it meanwhile: check theirs.
            Err(e) if e.to_string().contains("already in use") => continue,
            Err(e) => return Err(setup(e.into())),
        }
    }
    Err(setup(
        "the stream keeps changing while it is checked".into(),
    ))
}

/// Finds or creates a durable pull consumer.
async fn ensure_consumer(
    stream: &stream::Stream,
    config: consumer::pull::Config,
) -> Result<PullConsumer, SetupError> {
    let name = config.durable_name.clone().unwrap_or_default();
    let setup = |source: async_nats::Error| SetupError::JetStream {
        what: "consumer",
        name: name.clone(),
        source,
    };
    let ack_wait = config.ack_wait;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| setup(e.into()))?;
    let found = &consumer.cached_info().config;
    if found.ack_policy != consumer::AckPolicy::Explicit {
        return Err(setup(
            format!(
                "it exists with ack policy {:?}; it needs explicit acks (delete it to have it made again)",
                found.ack_policy
            )
            .into(),
        ));
    }
    if found.ack_wait != ack_wait {
        tracing::info!(
            consumer = %name,
            ack_wait = ?found.ack_wait,
            lease = ?ack_wait,
            "the consumer exists with another ack_wait; this process's leases are set per call"
        );
    }
    Ok(consumer)
}

impl JetStreamQueue {
    /// Connects (waiting up to `connect_timeout` for the server), then creates or checks the
    /// streams, consumers and buckets.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, SetupError> {
        let names = Names::new(&config.stream)?;
        let client = connect(&config).await?;
        let js = jetstream::new(client.clone());
        let replicas = config.replicas.max(1);
        let requests = ensure_stream(
            &js,
            stream::Config {
                name: names.requests.clone(),
                subjects: vec![format!("{}.>", names.requests)],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
            false,
        )
        .await?;
        let workers = ensure_consumer(
            &requests,
            consumer::pull::Config {
                durable_name: Some(names.workers.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.lease,
                max_deliver: -1,
                max_ack_pending: -1,
                ..Default::default()
            },
        )
        .await?;
        let dlq = ensure_stream(
            &js,
            stream::Config {
                name: names.dlq.clone(),
                subjects: vec![format!("{}.>", names.dlq)],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                num_replicas: replicas,
                max_messages_per_subject: 1,
                ..Default::default()
            },
            false,
        )
        .await?;
        let callbacks = ensure_stream(
            &js,
            stream::Config {
                name: names.callbacks.clone(),
                subjects: vec![format!("{}.>", names.callbacks)],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
            false,
        )
        .await?;
        let dispatchers = ensure_consumer(
            &callbacks,
            consumer::pull::Config {
                durable_name: Some(names.dispatchers.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_deliver: -1,
                max_ack_pending: -1,
                ..Default::default()
            },
        )
        .await?;
        // The bucket's stream is made by hand (the layout `nats kv` uses) rather than with
        // `create_key_value`, which needs account details older servers do not send.
        ensure_stream(
            &js,
            stream::Config {
                name: format!("KV_{}", names.bucket),
                subjects: vec![format!("$KV.{}.>", names.bucket)],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                num_replicas: replicas,
                max_messages_per_subject: 1,
                max_age: config.retention,
                allow_rollup: true,
                deny_delete: true,
                // Reads go to the stream leader (see `entry`; a bucket made with direct gets
                // serves as well).
                allow_direct: false,
                discard: DiscardPolicy::New,
                duplicate_window: config.retention.min(Duration::from_secs(120)),
                ..Default::default()
            },
            true,
        )
        .await?;
        let kv = js
            .get_key_value(&names.bucket)
            .await
            .map_err(|e| SetupError::JetStream {
                what: "key-value bucket",
                name: names.bucket.clone(),
                source: e.into(),
            })?;
        ensure_stream(
            &js,
            stream::Config {
                name: format!("OBJ_{}", names.results),
                subjects: vec![
                    format!("$O.{}.C.>", names.results),
                    format!("$O.{}.M.>", names.results),
                ],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                num_replicas: replicas,
                max_age: config.retention,
                allow_rollup: true,
                // The object store reads with direct gets when the stream allows them, and a
                // lagging replica could miss a body stored a moment ago.
                allow_direct: false,
                discard: DiscardPolicy::New,
                duplicate_window: config.retention.min(Duration::from_secs(120)),
                ..Default::default()
            },
            false,
        )
        .await?;
        let results =
            js.get_object_store(&names.results)
                .await
                .map_err(|e| SetupError::JetStream {
                    what: "object store",
                    name: names.results.clone(),
                    source: e.into(),
                })?;
        let ack_wait = workers.cached_info().config.ack_wait;
        tracing::info!(
            url = %config.url,
            stream = %names.requests,
            max_payload = client.max_payload(),
            "JetStream queue ready"
        );
        Ok(JetStreamQueue {
            client,
            js,
            names,
            requests,
            workers,
            dlq,
            callbacks,
            dispatchers,
            kv,
            results,
            config,
            ack_wait,
            held: Mutex::default(),
            claimed: Mutex::default(),
            settled: Mutex::default(),
        })
    }

    /// Most bytes a message may carry, from the server.
    fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// Fails fast while the connection is down: publishing would only be buffered, and the
    /// caller must hear "unavailable" rather than wait for a timeout.
    fn connected(&self) -> Result<(), QueueError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(unavailable(NotConnected(format!("{state:?}")))),
        }
    }

    async fn read(&self, call_id: &str) -> Result<Option<Versioned>, QueueError> {
        match self.lookup(call_id).await? {
            Stored::Found(v) => Ok(Some(*v)),
            Stored::Removed | Stored::Missing => Ok(None),
        }
    }

    /// A call's record, or whether it was removed. Read from the bucket stream's leader
    /// whatever the bucket's `allow_direct`: in a cluster a lagging replica answering a direct
    /// get could show a record from before its last change, and a worker deciding from it
    /// could drop a call's only message.
    async fn lookup(&self, call_id: &str) -> Result<Stored<Box<Versioned>>, QueueError> {
        let (payload, revision) = match self.entry(&record_key(call_id)).await? {
            Stored::Found(found) => found,
            Stored::Removed => return Ok(Stored::Removed),
            Stored::Missing => return Ok(Stored::Missing),
        };
        let record = serde_json::from_slice(&payload).map_err(|source| QueueError::Corrupt {
            call_id: call_id.to_string(),
            source,
        })?;
        Ok(Stored::Found(Box::new(Versioned { record, revision })))
    }

    /// The latest entry of a bucket key, read from the stream leader (never a direct get,
    /// which a lagging replica may answer).
    async fn entry(&self, key: &str) -> Result<Stored<(Bytes, u64)>, QueueError> {
        let subject = format!("{}{}", self.kv.prefix, key);
        let message = match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Stored::Missing);
            }
            Err(e) => return Err(unavailable(e)),
        };
        let operation = message
            .headers
            .get("KV-Operation")
            .map(|v| v.as_str().to_string());
        let marker = message
            .headers
            .get(async_nats::header::NATS_MARKER_REASON)
            .map(|v| v.as_str().to_string());
        Ok(match (operation.as_deref(), marker.as_deref()) {
            (Some("DEL" | "PURGE"), _) => Stored::Removed,
            // An expiry marker (servers that write them): the same as no entry.
            (None, Some("MaxAge")) => Stored::Missing,
            (None, Some(_)) => Stored::Removed,
            _ => Stored::Found((message.payload, message.sequence)),
        })
    }

    /// Writes `record` if the stored one is still at `revision` (0: if there is none); its new
    /// revision, or `None` when another writer came first.
    async fn write(&self, record: &Record, revision: u64) -> Result<Option<u64>, QueueError> {
        let value =
            Bytes::from(
                serde_json::to_vec(record).map_err(|source| QueueError::Corrupt {
                    call_id: record.call_id.clone(),
                    source,
                })?,
            );
        let key = record_key(&record.call_id);
        if revision == 0 {
            return match self.kv.create(key, value).await {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(unavailable(e)),
            };
        }
        match self.kv.update(key, value, revision).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Reads a call's record, lets `change` edit it and stores it, again from a fresh read
    /// whenever another writer came in between. `None`: there is no record.
    async fn modify<T>(
        &self,
        call_id: &str,
        change: impl FnMut(&mut Record) -> Step<T>,
    ) -> Result<Option<(T, Versioned)>, QueueError> {
        self.modify_from(call_id, None, change).await
    }

    /// [`Self::modify`], starting from a record just read.
    async fn modify_from<T>(
        &self,
        call_id: &str,
        mut current: Option<Versioned>,
        mut change: impl FnMut(&mut Record) -> Step<T>,
    ) -> Result<Option<(T, Versioned)>, QueueError> {
        for _ in 0..CAS_ATTEMPTS {
            let read = match current.take() {
                Some(v) => Some(v),
                None => self.read(call_id).await?,
            };
            let Some(Versioned {
                mut record,
                revision,
            }) = read
            else {
                return Ok(None);
            };
            match change(&mut record) {
                Step::Keep(t) => return Ok(Some((t, Versioned { record, revision }))),
                Step::Write(t) => {
                    if let Some(revision) = self.write(&record, revision).await? {
                        return Ok(Some((t, Versioned { record, revision })));
                    }
                }
            }
        }
        Err(unavailable(Contended(call_id.to_string())))
    }

    /// Publishes a request message (deduplicated by `msg_id` inside the window).
    async fn publish_request(
        &self,
        function: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, QueueError> {
        self.js
            .send_publish(
                format!("{}.{}", self.names.requests, subject_token(function)),
                Publish::build().payload(payload).message_id(msg_id),
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)
    }

    /// Removes the record a failed enqueue stored, and then the idempotency key it claimed,
    /// in the background (the caller hears "unavailable" at once; a server that is down gets
    /// the removal after reconnecting). Each is removed only while it is still at the revision
    /// the enqueue wrote, and the key only once the record is gone: a call that landed after
    /// all and was taken by a worker, or that a later request was told about (see
    /// [`Self::duplicate`]), is never undone.
    fn forget(&self, call_id: &str, revision: u64, key: Option<(String, u64)>) {
        let kv = self.kv.clone();
        let record = record_key(call_id);
        tokio::spawn(async move {
            let undo = undo(&kv, &record, revision, key.as_ref());
            match tokio::time::timeout(FORGET_WITHIN, undo).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                    tracing::debug!(key = record, "a failed enqueue's record is in use; kept");
                }
                Ok(Err(e)) => {
                    tracing::warn!(key = record, error = %e, "cannot remove what a failed enqueue stored")
                }
                Err(_) => {
                    tracing::warn!(
                        key = record,
                        "timed out removing what a failed enqueue stored"
                    )
                }
            }
        });
    }

    /// A call id seen before: the call it names. A call that no worker has taken yet is
    /// published again under its record's message id: the server drops the copy inside its
    /// duplicate window, and later a worker drops whichever of the two messages it sees second
    /// (the record names the live one), so an enqueue that failed half-way cannot leave a
    /// record without a message. The copy carries this request's body and headers, and the
    /// record's callback URL.
    async fn duplicate(
        &self,
        call_id: &str,
        request: &QueueRequest,
    ) -> Result<Enqueued, QueueError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(v) = self.read(call_id).await? else {
                // The first enqueue failed and removed its record meanwhile: not a call to
                // point at.
                return Err(unavailable(Vanished(call_id.to_string())));
            };
            let unseen = v.record.state == CallState::Queued
                && v.record.attempts == 0
                && v.record.seq.is_none();
            if !unseen {
                return Ok(Enqueued::Duplicate(call_id.to_string()));
            }
            // Store the record again, unchanged: a failed first enqueue removes it only at
            // the revision it wrote, so the call this answer names cannot be undone after it.
            if self.write(&v.record, v.revision).await?.is_none() {
                continue;
            }
            let mut again = request.clone();
            again.call_id = call_id.to_string();
            again.enqueued_at = v.record.enqueued_at;
            again.callback_url.clone_from(&v.record.callback_url);
            again
                .header
                .insert("X-Call-Id".into(), vec![call_id.to_string()]);
            let payload = serde_json::to_vec(&again).map_err(|source| QueueError::Corrupt {
                call_id: call_id.to_string(),
                source,
            })?;
            // The server drops this copy if the record's message landed within the window
            // (a message of this record is never dropped by a worker while it is unseen).
            self.publish_request(&again.function, v.record.msg_id(), payload.into())
                .await?;
            return Ok(Enqueued::Duplicate(call_id.to_string()));
        }
        Err(unavailable(Contended(call_id.to_string())))
    }

    /// Takes one fetched request message for `owner`, or hands it back.
    async fn take(
        &self,
        message: Message,
        owner: &str,
        lease: Duration,
        busy: &[String],
        slots: &AtomicUsize,
    ) -> Result<Option<Leased>, QueueError> {
        let seq = message.info().map_err(boxed)?.stream_sequence;
        let mut request: QueueRequest = match serde_json::from_slice(&message.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(subject = %message.subject, seq, error = %e, "unreadable queued call; terminated");
                message.ack_with(AckKind::Term).await.map_err(boxed)?;
                return Ok(None);
            }
        };
        if busy.contains(&request.function) {
            // Back after a short delay, so the next fetch reaches other functions' calls first.
            message.ack_with(nak(HAND_BACK)).await.map_err(boxed)?;
            return Ok(None);
        }
        let now = unix_ms();
        let mut taken = None;
        let mut slot = Slot(None);
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, revision) = match self.lookup(&request.call_id).await? {
                Stored::Found(v) => {
                    let Versioned { record, revision } = *v;
                    (record, revision)
                }
                // Its enqueue failed and was undone (the client was not given a 202), or it
                // was purged: the message is left over.
                Stored::Removed => {
                    message.ack().await.map_err(boxed)?;
                    return Ok(None);
                }
                // No record (expired with a long backlog): the message is the truth.
                Stored::Missing => (Record::queued(&request), 0),
            };
            let decision = match record.state {
                // Another message is this call's live one (a republished or redriven copy).
                _ if record.seq.is_some_and(|s| s != seq) => Decision::Drop,
                CallState::Retrying => match record.next_attempt_at {
                    // Delivered early (its delayed nak was lost): wait for the retry time.
                    Some(t) if t > now.saturating_add(5) => {
                        Decision::Later(Duration::from_millis(t - now))
                    }
                    _ => Decision::Take,
                },
                // A running call delivered again: its lease ran out on the server (the worker
                // died or stopped extending it). Take it over.
                CallState::Queued | CallState::Running => Decision::Take,
                // Finished, dead-lettered or cancelled: this message is left over.
                _ => Decision::Drop,
            };
            match decision {
                Decision::Drop => {
                    message.ack().await.map_err(boxed)?;
                    return Ok(None);
                }
                Decision::Later(d) => {
                    message.ack_with(nak(d)).await.map_err(boxed)?;
                    return Ok(None);
                }
                Decision::Take => {}
            }
            if slot.0.is_none() {
                if slots
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_err()
                {
                    // Fetched beyond what the worker can run: back at once, for its next lease.
                    message.ack_with(nak(Duration::ZERO)).await.map_err(boxed)?;
                    return Ok(None);
                }
                slot.0 = Some(slots);
            }
            record.state = CallState::Running;
            record.owner = Some(owner.to_string());
            record.attempts += 1;
            record.started_at = Some(now);
            record.next_attempt_at = None;
            record.seq = Some(seq);
            if let Some(revision) = self.write(&record, revision).await? {
                taken = Some(Versioned { record, revision });
                break;
            }
        }
        let Some(current) = taken else {
            return Err(unavailable(Contended(request.call_id)));
        };
        slot.keep();
        if lease != self.ack_wait
            && let Err(e) = message.double_ack_with(nak(lease)).await
        {
            // The call is ours; its lease is the consumer's ack_wait instead.
            tracing::warn!(call_id = %request.call_id, error = %e, "cannot set the lease length");
        }
        request.attempt = current.record.attempts;
        // The record's callback is the one its outcome goes to (a republished copy carries
        // the repeat's headers).
        request
            .callback_url
            .clone_from(&current.record.callback_url);
        let retry_since = current.record.retry_since;
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                request.call_id.clone(),
                Held {
                    owner: owner.to_string(),
                    message,
                    lease,
                    current,
                },
            );
        Ok(Some(Leased {
            request,
            retry_since,
        }))
    }

    /// The message `owner` leased for `call_id`, if it still holds it here.
    fn held_message(&self, call_id: &str, owner: &str) -> Option<Message> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(call_id)
            .filter(|h| h.owner == owner)
            .map(|h| h.message.clone())
    }

    /// The ack that restarts a lease of `lease`: `in_progress` when it is the consumer's
    /// `ack_wait`, else a nak delayed by it (the server treats both as "still working").
    fn renewal(&self, lease: Duration) -> AckKind {
        if lease == self.ack_wait {
            AckKind::Progress
        } else {
            nak(lease)
        }
    }

    /// Removes and returns the message `owner` leased for `call_id`: the call is being settled
    /// (if settling fails, the message comes back after its lease and is taken again).
    fn take_held(&self, call_id: &str, owner: &str) -> Option<Held> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(call_id).is_some_and(|h| h.owner == owner) {
            held.remove(call_id)
        } else {
            None
        }
    }

    /// Publishes the callback message of a finished call; its sequence and the object holding
    /// its body, if the body did not fit.
    async fn publish_callback(
        &self,
        record: &Record,
        url: &str,
        outcome: &Outcome,
    ) -> Result<(u64, Option<String>), QueueError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut message = CallbackMessage {
            call_id: record.call_id.clone(),
            function: record.function.clone(),
            url: url.to_string(),
            attempts: record.attempts,
            status: outcome.status,
            headers: outcome.headers.clone(),
            body: Some(b64.encode(&outcome.body)),
            body_object: None,
            duration: outcome.duration,
            error: outcome.error.clone(),
        };
        let mut payload = serde_json::to_vec(&message).map_err(|source| QueueError::Corrupt {
            call_id: record.call_id.clone(),
            source,
        })?;
        if payload.len() + FRAMING > self.max_payload() {
            let name = format!("{}#{}", record.call_id, uuid::Uuid::new_v4());
            let mut body: &[u8] = &outcome.body;
            self.results
                .put(name.as_str(), &mut body)
                .await
                .map_err(unavailable)?;
            message.body = None;
            message.body_object = Some(name);
            payload = serde_json::to_vec(&message).map_err(|source| QueueError::Corrupt {
                call_id: record.call_id.clone(),
                source,
            })?;
        }
        let ack = self
            .js
            .send_publish(
                format!("{}.{}", self.names.callbacks, record_key(&record.call_id)),
                Publish::build().payload(payload.into()),
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok((ack.sequence, message.body_object))
    }

    /// Removes a callback message and its stored body (best effort: a leftover is dropped by
    /// whichever dispatcher sees it).
    async fn remove_callback(&self, seq: u64, object: Option<&str>) {
        if let Err(e) = self.callbacks.delete_message(seq).await {
            tracing::debug!(seq, error = %e, "callback message already gone");
        }
        if let Some(name) = object
            && let Err(e) = self.results.delete(name).await
        {
            tracing::debug!(object = name, error = %e, "stored callback body already gone");
        }
    }

    /// Records the final outcome of a call `owner` holds, queues its callback, and acks (or,
    /// for a dead letter, terms) its message.
    async fn finalize(
        &self,
        call_id: &str,
        owner: &str,
        outcome: Outcome,
        claim: Duration,
        dead: bool,
    ) -> Result<bool, QueueError> {
        let Some(Held {
            message,
            current,
            lease,
            ..
        }) = self.take_held(call_id, owner)
        else {
            return Ok(false);
        };
        // Keep the lease while a slow outcome is stored (a large body, a dead-letter copy); a
        // small one takes two round trips, well inside the two thirds of the lease that are
        // left at least.
        if (dead || outcome.body.len() > self.max_payload() / 2)
            && let Err(e) = message.ack_with(self.renewal(lease)).await
        {
            tracing::debug!(call_id, error = %e, "cannot extend the lease before finishing");
        }
        let copy = if dead {
            // The copy first: a dead letter must never exist without its request.
            let ack = self
                .js
                .send_publish(
                    self.dead_subject(call_id),
                    Publish::build().payload(message.payload.clone()),
                )
                .await
                .map_err(unavailable)?
                .await
                .map_err(unavailable)?;
            Some(ack.sequence)
        } else {
            None
        };
        let callback = match &current.record.callback_url {
            Some(url) => Some(
                self.publish_callback(&current.record, url, &outcome)
                    .await?,
            ),
            None => None,
        };
        let (head, truncated) = cap(&outcome.body, self.result_cap());
        let now = unix_ms();
        let state = if !dead && outcome.succeeded() {
            CallState::Succeeded
        } else {
            CallState::Failed
        };
        let attempts = current.record.attempts;
        let settled = self
            .modify_from(call_id, Some(current), |record| {
                if !record.held_by(owner) || record.attempts != attempts {
                    return Step::Keep(false);
                }
                record.state = state;
                record.dead = dead;
                record.owner = None;
                record.finished_at = Some(now);
                record.status_code = Some(outcome.status);
                record.last_error = outcome.error.clone();
                record.result = Some(base64::engine::general_purpose::STANDARD.encode(head));
                record.result_truncated = truncated;
                match &callback {
                    Some((seq, object)) => {
                        record.callback = "pending".into();
                        record.callback_due = Some(now.saturating_add(ms(claim)));
                        record.callback_seq = Some(*seq);
                        record.callback_object = object.clone();
                    }
                    None => record.callback = "none".into(),
                }
                Step::Write(true)
            })
            .await?;
        let settled = match settled {
            Some((true, v)) => v,
            lost => {
                lease_lost(call_id);
                if let Some((seq, object)) = &callback {
                    self.remove_callback(*seq, object.as_deref()).await;
                }
                // Remove the copy, unless the call's new owner has dead-lettered it meanwhile
                // or is doing so (the stream keeps one copy per call: a later one may have
                // replaced it, or replace it in a moment).
                if let Some(seq) = copy {
                    let _ = match lost {
                        Some((_, now)) => self.purge_left_over_copy(&now.record, seq).await,
                        None => self.purge_dead_copy(call_id, seq).await,
                    };
                }
                return Ok(false);
            }
        };
        if callback.is_some() {
            // The first delivery is this process's: its result saves a read.
            self.settled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(call_id.to_string(), settled);
        }
        // A dead letter's term is confirmed (it is rare, and the message must not come back);
        // a success's ack is not waited for (a redelivery is dropped: the record is final).
        let acked = if dead {
            message.double_ack_with(AckKind::Term).await
        } else {
            message.ack().await
        };
        if let Err(e) = acked {
            tracing::warn!(call_id, error = %e, "cannot ack a finished call's message");
        }
        Ok(true)
    }

    /// Result bytes a status record keeps: the configured cap, within what one record can carry.
    fn result_cap(&self) -> usize {
        let room = self.max_payload().saturating_sub(FRAMING * 4) / 4 * 3;
        self.config.result_cap.min(room)
    }

    /// The dead-letter subject of a call.
    fn dead_subject(&self, call_id: &str) -> String {
        format!("{}.{}", self.names.dlq, record_key(call_id))
    }

    /// Call ids in the dead-letter stream.
    async fn dead_letter_ids(&self) -> Result<Vec<String>, QueueError> {
        let prefix = format!("{}.", self.names.dlq);
        let mut subjects = self
            .dlq
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(unavailable)?;
        let mut ids = Vec::new();
        while let Some(item) = subjects.next().await {
            let (subject, _count) = item.map_err(unavailable)?;
            if let Some(id) = subject.strip_prefix(&prefix).and_then(call_id_from_key) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The stored copy of a dead-lettered request, and its sequence in the dead-letter stream.
    async fn dead_request(&self, call_id: &str) -> Result<Option<(QueueRequest, u64)>, QueueError> {
        match self
            .dlq
            .get_last_raw_message_by_subject(&self.dead_subject(call_id))
            .await
        {
            Ok(m) => serde_json::from_slice(&m.payload)
                .map(|request| Some((request, m.sequence)))
                .map_err(|source| QueueError::Corrupt {
                    call_id: call_id.to_string(),
                    source,
                }),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Removes a call's dead-letter copy if it is the one at `seq` or older (a newer one is
    /// a later dead letter of the same call).
    async fn purge_dead_copy(&self, call_id: &str, seq: u64) -> Result<(), QueueError> {
        self.dlq
            .purge()
            .filter(self.dead_subject(call_id))
            .sequence(seq.saturating_add(1))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes a copy the record says is left over: the call is no longer a dead letter and
    /// not running either (a running call's owner may be dead-lettering it right now, copy
    /// first and record second).
    async fn purge_left_over_copy(&self, record: &Record, seq: u64) -> Result<(), QueueError> {
        if record.dead || record.state == CallState::Running {
            return Ok(());
        }
        self.purge_dead_copy(&record.call_id, seq).await
    }

    /// Queues one dead letter again; whether it was one.
    async fn redrive_one(&self, call_id: &str) -> Result<bool, QueueError> {
        let Some((request, copy)) = self.dead_request(call_id).await? else {
            return Ok(false);
        };
        let now = unix_ms();
        let mut old_callback = None;
        let mut redrive = |record: &mut Record| {
            if !record.dead {
                return Step::Keep(None);
            }
            old_callback = record
                .callback_seq
                .take()
                .map(|seq| (seq, record.callback_object.take()));
            record.state = CallState::Queued;
            record.dead = false;
            record.attempts = 0;
            record.retry_since = now;
            record.finished_at = None;
            record.owner = None;
            record.seq = None;
            record.callback = "none".into();
            record.callback_attempts = 0;
            record.callback_error = None;
            record.callback_due = None;
            record.redrives += 1;
            Step::Write(Some(record.redrives))
        };
        let n = match self.modify(call_id, &mut redrive).await? {
            Some((Some(n), _)) => n,
            Some((None, current)) => {
                // Not a dead letter any more (redriven already): the copy is left over.
                self.purge_left_over_copy(&current.record, copy).await?;
                return Ok(false);
            }
            None => {
                // The record expired; the copy is still a dead letter.
                let mut record = Record::queued(&request);
                record.dead = true;
                let _ = redrive(&mut record);
                if self.write(&record, 0).await?.is_none() {
                    // Stored meanwhile by another redrive.
                    return Ok(false);
                }
                record.redrives
            }
        };
        if let Some((seq, object)) = old_callback {
            // The last outcome's callback, if still pending, is superseded.
            self.remove_callback(seq, object.as_deref()).await;
        }
        let payload = serde_json::to_vec(&request).map_err(|source| QueueError::Corrupt {
            call_id: call_id.to_string(),
            source,
        })?;
        if let Err(e) = self
            .publish_request(
                &request.function,
                &format!("{call_id}#r{n}"),
                payload.into(),
            )
            .await
        {
            // Put it back among the dead letters rather than leave it queued without a message
            // (unless the publish landed after all and a worker has it).
            let _ = self
                .modify(call_id, |record| {
                    if record.state != CallState::Queued
                        || record.attempts != 0
                        || record.redrives != n
                    {
                        return Step::Keep(());
                    }
                    record.state = CallState::Failed;
                    record.dead = true;
                    Step::Write(())
                })
                .await;
            return Err(e);
        }
        self.purge_dead_copy(call_id, copy).await?;
        Ok(true)
    }

    /// Decides about one fetched callback message: a job to deliver now, or nothing.
    async fn claim_callback(
        &self,
        message: Message,
        claim: Duration,
    ) -> Result<Option<CallbackJob>, QueueError> {
        let seq = message.info().map_err(boxed)?.stream_sequence;
        let Ok(cb) = serde_json::from_slice::<CallbackMessage>(&message.payload) else {
            tracing::error!(subject = %message.subject, "unreadable callback message; dropped");
            message.ack_with(AckKind::Term).await.map_err(boxed)?;
            return Ok(None);
        };
        let now = unix_ms();
        let record = self.read(&cb.call_id).await?.map(|v| v.record);
        let decision = match &record {
            Some(r) if r.callback == "pending" && r.callback_seq == Some(seq) => {
                match r.callback_due {
                    Some(due) if due > now => Decision::Later(Duration::from_millis(due - now)),
                    _ => Decision::Take,
                }
            }
            // Its outcome is not recorded yet (the worker is between the two steps).
            Some(r)
                if r.callback == "none"
                    && r.state == CallState::Running
                    && r.attempts == cb.attempts =>
            {
                Decision::Later(claim)
            }
            // Delivered, given up, superseded, or the call is gone.
            _ => Decision::Drop,
        };
        match decision {
            Decision::Drop => {
                message.ack().await.map_err(boxed)?;
                if let Some(name) = &cb.body_object
                    && record.is_none_or(|r| r.callback_object.as_ref() != Some(name))
                {
                    let _ = self.results.delete(name).await;
                }
                return Ok(None);
            }
            Decision::Later(d) => {
                message.ack_with(nak(d)).await.map_err(boxed)?;
                return Ok(None);
            }
            Decision::Take => {}
        }
        let body = match (&cb.body, &cb.body_object) {
            (Some(b), _) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            (None, Some(name)) => match self.read_body(name).await {
                Ok(body) => body,
                Err(BodyError::Gone) => {
                    tracing::error!(call_id = %cb.call_id, object = %name, "the callback's stored body is gone; giving up on it");
                    message.ack().await.map_err(boxed)?;
                    self.callback_result(
                        &cb.call_id,
                        false,
                        None,
                        Some("the stored callback body is gone"),
                    )
                    .await?;
                    return Ok(None);
                }
                Err(BodyError::Queue(e)) => return Err(e),
            },
            (None, None) => Vec::new(),
        };
        message.double_ack_with(nak(claim)).await.map_err(boxed)?;
        let delivery_attempts = record.map_or(0, |r| r.callback_attempts);
        self.claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cb.call_id.clone(), message);
        Ok(Some(CallbackJob {
            call_id: cb.call_id,
            function: cb.function,
            url: cb.url,
            outcome: Outcome {
                status: cb.status,
                headers: cb.headers,
                body,
                duration: cb.duration,
                error: cb.error,
            },
            attempts: cb.attempts,
            delivery_attempts,
        }))
    }

    async fn read_body(&self, name: &str) -> Result<Vec<u8>, BodyError> {
        let mut object = match self.results.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                return Err(BodyError::Gone);
            }
            Err(e) => return Err(BodyError::Queue(unavailable(e))),
        };
        let mut body = Vec::new();
        object
            .read_to_end(&mut body)
            .await
            .map_err(|e| BodyError::Queue(unavailable(e)))?;
        Ok(body)
    }

    /// Takes (lease) or claims (callback) each fetched message side by side, each a few round
    /// trips to the server. The ones taken are returned even when others failed (their
    /// failures are logged; the messages come back after their ack wait); an error with
    /// nothing taken is returned.
    async fn each<T, F>(
        &self,
        messages: Vec<Message>,
        what: &str,
        f: impl Fn(Message) -> F,
    ) -> Result<Vec<T>, QueueError>
    where
        F: std::future::Future<Output = Result<Option<T>, QueueError>>,
    {
        let results = futures_util::future::join_all(messages.into_iter().map(f)).await;
        let mut out = Vec::new();
        let mut failed = None;
        for r in results {
            match r {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::http::proxy::error_chain(&e), "{what}");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }
}

/// Deletes a record if it is still at `revision`, and then the idempotency key entry if it is
/// still at its revision.
async fn undo(
    kv: &kv::Store,
    record: &str,
    revision: u64,
    key: Option<&(String, u64)>,
) -> Result<(), kv::DeleteError> {
    kv.delete_expect_revision(record, Some(revision)).await?;
    if let Some((key, revision)) = key {
        kv.delete_expect_revision(key, Some(*revision)).await?;
    }
    Ok(())
}

/// Up to `max` messages from `consumer`, without waiting for more. Bounded in time: a no-wait
/// pull whose end marker is lost (a connection drop, a server race) must not hang the worker.
/// Messages received before an error are returned.
async fn fetch(consumer: &PullConsumer, max: usize) -> Result<Vec<Message>, QueueError> {
    let mut out = Vec::new();
    let mut failed = None;
    let collect = async {
        let mut batch = consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(unavailable)?;
        while let Some(message) = batch.next().await {
            match message {
                Ok(m) => out.push(m),
                Err(e) => {
                    failed = Some(boxed(e));
                    break;
                }
            }
        }
        Ok::<(), QueueError>(())
    };
    let result = tokio::time::timeout(FETCH_TIMEOUT, collect).await;
    match (result, failed) {
        (Ok(Err(e)), _) | (Ok(Ok(())), Some(e)) if out.is_empty() => Err(e),
        (Err(_), _) if out.is_empty() => Err(unavailable(FetchTimedOut)),
        _ => Ok(out),
    }
}

/// Why a stored callback body could not be read.
enum BodyError {
    /// It is not there (expired or removed).
    Gone,
    /// The server failed.
    Queue(QueueError),
}

/// A worker slot a lease has reserved for a call, given back unless kept.
struct Slot<'a>(Option<&'a AtomicUsize>);

impl Slot<'_> {
    /// The call is taken: the slot stays used.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(slots) = self.0 {
            slots.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// What to do with a fetched message.
enum Decision {
    /// It is ours now.
    Take,
    /// It is left over: ack it away.
    Drop,
    /// Not yet: hand it back for this long.
    Later(Duration),
}

/// A nak that makes the message deliverable again after `delay` (at once when zero).
fn nak(delay: Duration) -> AckKind {
    if delay.is_zero() {
        AckKind::Nak(None)
    } else {
        AckKind::Nak(Some(delay.min(MAX_DELAY)))
    }
}

/// Logs a lost lease.
fn lease_lost(call_id: &str) {
    tracing::warn!(
        call_id,
        "lease lost before the outcome was recorded; another worker owns the call"
    );
}

/// `bytes` cut at `cap`, and whether it was cut.
fn cap(bytes: &[u8], cap: usize) -> (&[u8], bool) {
    (&bytes[..bytes.len().min(cap)], bytes.len() > cap)
}

/// A function name as one subject token (names are DNS labels, possibly with a namespace).
fn subject_token(function: &str) -> String {
    function
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' | '\r' | '\n' => '_',
            c => c,
        })
        .collect()
}

/// The connection is down.
#[derive(Debug, thiserror::Error)]
#[error("not connected to NATS (connection {0})")]
struct NotConnected(String);

/// A fetch did not end in time.
#[derive(Debug, thiserror::Error)]
#[error("fetching from the consumer timed out")]
struct FetchTimedOut;

/// A call id's record disappeared while it was being looked at.
#[derive(Debug, thiserror::Error)]
#[error("call {0} was being stored and is gone; try again")]
struct Vanished(String);

/// Too many writers at once on one record.
#[derive(Debug, thiserror::Error)]
#[error("call {0}: too many concurrent updates")]
struct Contended(String);

/// The request does not fit in one message.
#[derive(Debug, thiserror::Error)]
#[error("request of {size} bytes exceeds the NATS max_payload of {limit} bytes")]
struct TooLarge {
    size: usize,
    limit: usize,
}

/// Connects, retrying until `connect_timeout`; later losses reconnect forever.
async fn connect(config: &JetStreamConfig) -> Result<async_nats::Client, SetupError> {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        let options = async_nats::ConnectOptions::new()
            .name("fgateway")
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connection restored"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting")
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            });
        match options.connect(config.url.as_str()).await {
            Ok(client) => return Ok(client),
            Err(source) => {
                if tokio::time::Instant::now() + delay > deadline {
                    return Err(SetupError::Connect {
                        url: config.url.clone(),
                        timeout: config.connect_timeout,
                        source,
                    });
                }
                tracing::warn!(url = %config.url, error = %source, "NATS not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl Queue for JetStreamQueue {
    fn enqueue(
        &self,
        request: QueueRequest,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, Result<Enqueued, QueueError>> {
        Box::pin(async move {
            let call_id = request.call_id.clone();
            let payload = serde_json::to_vec(&request).map_err(|source| QueueError::Corrupt {
                call_id: call_id.clone(),
                source,
            })?;
            let limit = self.max_payload().saturating_sub(FRAMING);
            if payload.len() > limit {
                return Err(QueueError::TooLarge {
                    limit: limit / 4 * 3,
                    source: Box::new(TooLarge {
                        size: payload.len(),
                        limit: self.max_payload(),
                    }),
                });
            }
            self.connected()?;
            let record = Record::queued(&request);
            let Some(revision) = self.write(&record, 0).await? else {
                return self.duplicate(&call_id, &request).await;
            };
            let forget = || self.forget(&call_id, revision, None);
            let mut key_revision = None;
            if let Some(key) = &idempotency_key {
                let ik = idem_key(key);
                let value = Bytes::from(call_id.clone());
                match self.kv.create(&ik, value.clone()).await {
                    Ok(r) => key_revision = Some(r),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                        let (first, held_at) = match self.entry(&ik).await {
                            Ok(Stored::Found((value, at))) => {
                                (String::from_utf8_lossy(&value).into_owned(), at)
                            }
                            Ok(_) => {
                                forget();
                                return Err(unavailable(Vanished(call_id)));
                            }
                            Err(e) => {
                                forget();
                                return Err(e);
                            }
                        };
                        if first == call_id {
                            // Our own create landed although its answer was lost.
                            key_revision = Some(held_at);
                        } else {
                            match self.read(&first).await {
                                Ok(Some(_)) => {
                                    forget();
                                    return self.duplicate(&first, &request).await;
                                }
                                // The first call's enqueue failed and was undone: the key is
                                // this call's now.
                                Ok(None) => match self.kv.update(&ik, value, held_at).await {
                                    Ok(r) => key_revision = Some(r),
                                    Err(e) => {
                                        forget();
                                        return Err(unavailable(e));
                                    }
                                },
                                Err(e) => {
                                    forget();
                                    return Err(e);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        forget();
                        return Err(unavailable(e));
                    }
                }
            }
            match self
                .publish_request(&request.function, record.msg_id(), payload.into())
                .await
            {
                Ok(_) => Ok(Enqueued::New(call_id)),
                Err(e) => {
                    let key = idempotency_key.as_deref().map(idem_key).zip(key_revision);
                    self.forget(&call_id, revision, key);
                    Err(e)
                }
            }
        })
    }

    fn lease<'a>(
        &'a self,
        owner: &'a str,
        max: usize,
        lease: Duration,
        busy: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Leased>, QueueError>> {
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            let slots = AtomicUsize::new(max);
            let started = tokio::time::Instant::now();
            let mut batch = max;
            let mut scanned = 0;
            loop {
                let messages = fetch(&self.workers, batch).await?;
                let fetched = messages.len();
                scanned += fetched;
                let mut leased = self
                    .each(messages, "cannot lease a call", |m| {
                        self.take(m, owner, lease, busy, &slots)
                    })
                    .await?;
                // A full batch with nothing taken was handed back (a busy function's backlog)
                // or left over; either is out of the way now, so look further at once, in
                // larger batches, rather than meet the same calls again at the next lease.
                if leased.is_empty()
                    && fetched == batch
                    && scanned < SCAN_LIMIT
                    && started.elapsed() < HAND_BACK / 2
                {
                    batch = (batch * 2).min(SCAN_BATCH.max(max));
                    continue;
                }
                leased.sort_by_key(|l| l.request.enqueued_at);
                return Ok(leased);
            }
        })
    }

    fn extend<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async move {
            let Some(message) = self.held_message(call_id, owner) else {
                return Ok(false);
            };
            // Extend first: a slow or failing read must not cost the lease.
            message.ack_with(self.renewal(lease)).await.map_err(boxed)?;
            let holds = self
                .read(call_id)
                .await?
                .is_some_and(|v| v.record.held_by(owner));
            if !holds {
                self.take_held(call_id, owner);
            }
            Ok(holds)
        })
    }

    fn finish<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        outcome: Outcome,
        claim: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(self.finalize(call_id, owner, outcome, claim, false))
    }

    fn retry_later<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        delay: Duration,
        outcome: Outcome,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let Some(Held {
                message, current, ..
            }) = self.take_held(call_id, owner)
            else {
                return Ok(());
            };
            let next = unix_ms().saturating_add(ms(delay));
            let done = self
                .modify_from(call_id, Some(current), |record| {
                    if !record.held_by(owner) {
                        return Step::Keep(false);
                    }
                    record.state = CallState::Retrying;
                    record.owner = None;
                    record.next_attempt_at = Some(next);
                    record.status_code = Some(outcome.status);
                    record.last_error = outcome.error.clone();
                    Step::Write(true)
                })
                .await?
                .is_some_and(|(ok, _)| ok);
            if done {
                // Should this nak be lost, the message comes back after its lease and is
                // handed back until `next_attempt_at`.
                message.double_ack_with(nak(delay)).await.map_err(boxed)?;
            }
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        call_id: &'a str,
        owner: &'a str,
        outcome: Outcome,
        claim: Duration,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(self.finalize(call_id, owner, outcome, claim, true))
    }

    fn release<'a>(
        &'a self,
        call_ids: &'a [String],
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let mut failed = None;
            for call_id in call_ids {
                let Some(Held {
                    message, current, ..
                }) = self.take_held(call_id, owner)
                else {
                    continue;
                };
                let released = self
                    .modify_from(call_id, Some(current), |record| {
                        if !record.held_by(owner) {
                            return Step::Keep(false);
                        }
                        record.attempts = record.attempts.saturating_sub(1);
                        record.state = if record.attempts > 0 {
                            CallState::Retrying
                        } else {
                            CallState::Queued
                        };
                        record.owner = None;
                        Step::Write(true)
                    })
                    .await;
                let result = match released {
                    Ok(Some((true, _))) => {
                        message.double_ack_with(nak(HAND_BACK)).await.map_err(boxed)
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::warn!(call_id, error = %crate::http::proxy::error_chain(&e), "cannot hand a call back; it returns after its lease");
                    failed = Some(e);
                }
            }
            failed.map_or(Ok(()), Err)
        })
    }

    fn cancel<'a>(&'a self, call_id: &'a str) -> BoxFuture<'a, Result<Cancelled, QueueError>> {
        Box::pin(async move {
            self.connected()?;
            let now = unix_ms();
            let result = self
                .modify(call_id, |record| match record.state {
                    CallState::Queued | CallState::Retrying => {
                        record.state = CallState::Cancelled;
                        record.finished_at = Some(now);
                        Step::Write(Cancelled::Yes)
                    }
                    state => Step::Keep(Cancelled::TooLate(state)),
                })
                .await?;
            Ok(match result {
                None => Cancelled::NotFound,
                Some((Cancelled::Yes, record)) => {
                    // A call a worker has seen has a known message: remove it now rather than
                    // when its next delivery is dropped.
                    if let Some(seq) = record.record.seq {
                        let _ = self.requests.delete_message(seq).await;
                    }
                    Cancelled::Yes
                }
                Some((other, _)) => other,
            })
        })
    }

    fn status<'a>(
        &'a self,
        call_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CallStatus>, QueueError>> {
        Box::pin(async move { Ok(self.read(call_id).await?.map(|v| v.record.status())) })
    }

    fn dead_letters(&self) -> BoxFuture<'_, Result<Vec<CallStatus>, QueueError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for call_id in self.dead_letter_ids().await? {
                match self.read(&call_id).await? {
                    Some(v) if v.record.dead => out.push(v.record.status()),
                    Some(_) => {
                        // Left over from a redrive whose clean-up failed (the copy is read
                        // first: a later copy, of a death after it, is kept).
                        if let Some((_, seq)) = self.dead_request(&call_id).await?
                            && let Some(v) = self.read(&call_id).await?
                        {
                            let _ = self.purge_left_over_copy(&v.record, seq).await;
                        }
                    }
                    None => {
                        // The record expired; the copy remains a dead letter.
                        if let Some((request, _)) = self.dead_request(&call_id).await? {
                            let mut record = Record::queued(&request);
                            record.state = CallState::Failed;
                            record.dead = true;
                            out.push(record.status());
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.enqueued_at.cmp(&b.enqueued_at));
            out.truncate(DEAD_LETTER_PAGE);
            Ok(out)
        })
    }

    fn redrive<'a>(&'a self, call_id: Option<&'a str>) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(async move {
            self.connected()?;
            let ids = match call_id {
                Some(id) => vec![id.to_string()],
                None => self.dead_letter_ids().await?,
            };
            let mut n = 0;
            for id in ids {
                if self.redrive_one(&id).await? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn purge<'a>(&'a self, call_id: Option<&'a str>) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(async move {
            self.connected()?;
            let ids = match call_id {
                Some(id) => vec![id.to_string()],
                None => self.dead_letter_ids().await?,
            };
            let mut n = 0;
            for id in ids {
                // The record first: a copy newer than it (the call redriven and dead again
                // since) comes with a newer revision, and the record's removal below fails.
                let found = self.read(&id).await?;
                let copy = self.dead_request(&id).await?.map(|(_, seq)| seq);
                let Some(Versioned { record, revision }) = found else {
                    if let Some(seq) = copy {
                        self.purge_dead_copy(&id, seq).await?;
                        n += 1;
                    }
                    continue;
                };
                if !record.dead {
                    continue;
                }
                match self
                    .kv
                    .purge_expect_revision(record_key(&id), Some(revision))
                    .await
                {
                    Ok(()) => {}
                    Err(e) if e.kind() == kv::PurgeErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(unavailable(e)),
                }
                if let Some(seq) = copy {
                    self.purge_dead_copy(&id, seq).await?;
                }
                n += 1;
            }
            Ok(n)
        })
    }

    fn due_callbacks(
        &self,
        max: usize,
        claim: Duration,
    ) -> BoxFuture<'_, Result<Vec<CallbackJob>, QueueError>> {
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            let messages = fetch(&self.dispatchers, max).await?;
            self.each(messages, "cannot claim a callback", |m| {
                self.claim_callback(m, claim)
            })
            .await
        })
    }

    fn callback_result<'a>(
        &'a self,
        call_id: &'a str,
        delivered: bool,
        retry_in: Option<Duration>,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let claimed = self
                .claimed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(call_id);
            let settled = self
                .settled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(call_id);
            let now = unix_ms();
            let (state, due) = match (delivered, retry_in) {
                (true, _) => ("delivered", None),
                (false, Some(d)) => ("pending", Some(now.saturating_add(ms(d)))),
                (false, None) => ("failed", None),
            };
            // The callback this process delivered: a record whose pending callback is another
            // one (the call was redriven and finished again meanwhile) is not touched.
            let delivered_seq = claimed
                .as_ref()
                .and_then(|m| m.info().ok().map(|i| i.stream_sequence))
                .or_else(|| settled.as_ref().and_then(|v| v.record.callback_seq));
            let changed = self
                .modify_from(call_id, settled, |record| {
                    if record.callback != "pending"
                        || delivered_seq.is_some_and(|s| record.callback_seq != Some(s))
                    {
                        return Step::Keep(None);
                    }
                    record.callback = state.into();
                    record.callback_attempts += 1;
                    record.callback_error = error.map(str::to_string);
                    record.callback_due = due;
                    Step::Write(
                        record
                            .callback_seq
                            .map(|seq| (seq, record.callback_object.clone())),
                    )
                })
                .await?;
            let Some((Some((seq, object)), _)) = changed else {
                return Ok(());
            };
            match (delivered, retry_in) {
                (false, Some(d)) => {
                    // A claimed message comes back when the retry is due; one never fetched
                    // (the first, inline attempt failed) is handed back until then by
                    // whichever dispatcher fetches it.
                    if let Some(message) = claimed {
                        message.double_ack_with(nak(d)).await.map_err(boxed)?;
                    }
                }
                // Done with, delivered or not: remove the message (held here, elsewhere, or
                // never fetched) and its stored body.
                _ => self.remove_callback(seq, object.as_deref()).await,
            }
            Ok(())
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        Box::pin(async move {
            let info = self
                .requests
                .consumer_info(&self.names.workers)
                .await
                .map_err(unavailable)?;
            let stream = self.requests.get_info().await.map_err(unavailable)?;
            let in_flight = self
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u64;
            let unfinished = info.num_pending + info.num_ack_pending as u64;
            let oldest_age = if stream.state.messages == 0 {
                0.0
            } else {
                let first = stream.state.first_timestamp.unix_timestamp_nanos() / 1_000_000;
                let now = i128::from(unix_ms());
                (now - first).max(0) as f64 / 1000.0
            };
            Ok(QueueStats {
                depth: unfinished.saturating_sub(in_flight),
                oldest_age,
                in_flight,
            })
        })
    }

    fn expire(&self) -> BoxFuture<'_, Result<u64, QueueError>> {
        // The bucket's max_age drops records and idempotency keys after the retention
        // period, and the object store's drops stored bodies: nothing to do here.
        Box::pin(async { Ok(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `nats-server -js` of the test's own, on a free port with a temporary store.
    pub struct NatsServer {
        child: std::process::Child,
        /// Its URL.
        pub url: String,
        _store: tempfile::TempDir,
    }

    impl NatsServer {
        pub fn start() -> Self {
            let store = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            // On PATH, or where Debian puts it (not on a non-root PATH).
            let debian = std::path::Path::new("/usr/sbin/nats-server");
            let bin = if debian.is_file() {
                debian
            } else {
                std::path::Path::new("nats-server")
            };
            let child = std::process::Command::new(bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server must be installed (Debian package nats-server) to test the JetStream queue");
            NatsServer {
                child,
                url: format!("nats://127.0.0.1:{port}"),
                _store: store,
            }
        }

        pub async fn queue(&self, stream: &str) -> JetStreamQueue {
            JetStreamQueue::connect(JetStreamConfig {
                url: self.url.clone(),
                stream: stream.into(),
                replicas: 1,
                retention: Duration::from_secs(3600),
                result_cap: 64 * 1024,
                lease: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(10),
            })
            .await
            .unwrap()
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let server = NatsServer::start();
        let queue = server.queue("faas-request").await;
        crate::queue::suite::run(&queue).await;
    }

    #[tokio::test]
    async fn a_conflicting_stream_is_refused_and_a_big_request_is_too_large() {
        let server = NatsServer::start();
        let queue = server.queue("faas-request").await;
        let mut big = crate::queue::suite::request("big", "f", None);
        big.body = vec![b'x'; 2 * 1024 * 1024];
        match queue.enqueue(big, None).await {
            Err(QueueError::TooLarge { limit, .. }) => assert!(limit < 1024 * 1024),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // The same stream name with other replicas conflicts.
        let err = JetStreamQueue::connect(JetStreamConfig {
            url: server.url.clone(),
            stream: "faas-request".into(),
            replicas: 3,
            retention: Duration::from_secs(3600),
            result_cap: 1024,
            lease: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("replicas"), "{text}");

        // A call enqueued twice is one message: the server drops the repeat by its Nats-Msg-Id.
        for _ in 0..2 {
            queue
                .enqueue(crate::queue::suite::request("twice", "f", None), None)
                .await
                .unwrap();
        }
        let info = queue.requests.get_info().await.unwrap();
        assert_eq!(info.state.messages, 1);
    }

    #[tokio::test]
    async fn dead_letters_keep_their_request_and_big_results_reach_the_callback() {
        let server = NatsServer::start();
        let q = server.queue("faas-request").await;
        q.enqueue(
            crate::queue::suite::request("big-result", "f", Some("http://cb/")),
            None,
        )
        .await
        .unwrap();
        let leased = q
            .lease("w", 10, Duration::from_secs(30), &[])
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        let body = vec![7u8; 3 * 1024 * 1024];
        let outcome = Outcome {
            status: 200,
            headers: vec![],
            body: body.clone(),
            duration: 0.1,
            error: None,
        };
        assert!(
            q.finish("big-result", "w", outcome, Duration::ZERO)
                .await
                .unwrap()
        );
        let st = q.status("big-result").await.unwrap().unwrap();
        assert!(st.result_truncated);
        let due = q.due_callbacks(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].outcome.body.len(), body.len());
        q.callback_result("big-result", true, None, None)
            .await
            .unwrap();
        let info = q.callbacks.get_info().await.unwrap();
        assert_eq!(
            info.state.messages, 0,
            "delivered callbacks leave the stream"
        );
        let requests = q.requests.get_info().await.unwrap();
        assert_eq!(
            requests.state.messages, 0,
            "finished calls leave the stream"
        );

        // A dead letter is termed out of the work queue, kept in the dead-letter stream, and
        // goes back to the work queue when redriven.
        q.enqueue(crate::queue::suite::request("dl", "f", None), None)
            .await
            .unwrap();
        let leased = q
            .lease("w", 10, Duration::from_secs(30), &[])
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        let failed = Outcome {
            status: 500,
            ..Outcome::default()
        };
        assert!(
            q.dead_letter("dl", "w", failed, Duration::ZERO)
                .await
                .unwrap()
        );
        let count = |s: &stream::Stream| {
            let s = s.clone();
            async move { s.get_info().await.unwrap().state.messages }
        };
        assert_eq!(count(&q.requests).await, 0);
        assert_eq!(count(&q.dlq).await, 1);
        assert_eq!(q.dead_letters().await.unwrap()[0].call_id, "dl");
        assert_eq!(q.redrive(None).await.unwrap(), 1);
        assert_eq!(count(&q.requests).await, 1);
        assert_eq!(count(&q.dlq).await, 0);
        let again = q
            .lease("w", 10, Duration::from_secs(30), &[])
            .await
            .unwrap();
        assert_eq!(again[0].request.call_id, "dl");
        assert_eq!(again[0].request.attempt, 1);
    }

    #[tokio::test]
    async fn a_busy_function_backlog_does_not_starve_the_others() {
        let server = NatsServer::start();
        let q = server.queue("faas-request").await;
        let backlog = futures_util::future::join_all((0..200).map(|i| {
            let r = crate::queue::suite::request(&format!("busy-{i}"), "busy", None);
            q.enqueue(r, None)
        }))
        .await;
        assert!(backlog.iter().all(Result::is_ok));
        q.enqueue(crate::queue::suite::request("other", "other", None), None)
            .await
            .unwrap();
        // A worker with one free slot and "busy" at its limit, leasing as the worker loop
        // does: again after the hand-back, when the busy calls are deliverable once more, so
        // only a lease that looks past the whole backlog by itself finds the other call (one
        // message per lease, as before the scan, never does).
        let busy = ["busy".to_string()];
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut leases = 0;
        loop {
            leases += 1;
            let got = q
                .lease("w", 1, Duration::from_secs(30), &busy)
                .await
                .unwrap();
            if let Some(l) = got.first() {
                assert_eq!(l.request.call_id, "other");
                assert_eq!(got.len(), 1);
                break;
            }
            assert!(
                std::time::Instant::now() < end,
                "the other function's call never came ({leases} leases)"
            );
            tokio::time::sleep(HAND_BACK).await;
        }
        // The busy function's calls are all still queued, none lost.
        let mut back = 0;
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while back < 200 {
            back += q
                .lease("w", 64, Duration::from_secs(30), &[])
                .await
                .unwrap()
                .len();
            assert!(std::time::Instant::now() < end, "{back} of 200 came back");
        }
    }

    #[tokio::test]
    async fn an_undone_enqueue_never_runs_and_a_named_call_is_never_undone() {
        let server = NatsServer::start();
        let q = server.queue("faas-request").await;
        let lease = Duration::from_secs(30);

        // A call whose enqueue failed after its message landed: the undo removed its record,
        // so the message is left over and dropped, not run for a client that heard 503.
        q.enqueue(crate::queue::suite::request("undone", "f", None), None)
            .await
            .unwrap();
        q.kv.delete(record_key("undone")).await.unwrap();
        assert!(q.lease("w", 10, lease, &[]).await.unwrap().is_empty());
        // (The drop is an ack the server applies shortly after.)
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while q.requests.get_info().await.unwrap().state.messages > 0 {
            assert!(
                std::time::Instant::now() < end,
                "the left-over message stays"
            );
            tokio::task::yield_now().await;
        }
        // The client's retry with the same call id runs, although the server has seen that
        // message id inside its duplicate window.
        let again = q
            .enqueue(crate::queue::suite::request("undone", "f", None), None)
            .await
            .unwrap();
        assert!(matches!(again, Enqueued::New(_)), "{again:?}");
        let got = q.lease("w", 10, lease, &[]).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].request.call_id, "undone");

        // A first request with an Idempotency-Key whose enqueue stored its record and key
        // but whose message did not land (its undo is still pending)...
        let first = crate::queue::suite::request("first", "f", Some("http://a/"));
        let written = q.write(&Record::queued(&first), 0).await.unwrap().unwrap();
        let key =
            q.kv.create(idem_key("key-1"), Bytes::from("first"))
                .await
                .unwrap();
        // ...and a second request with the same key: it is told about the first call, and
        // from then on the first call's undo (at the revisions its enqueue wrote) can remove
        // neither the call nor the key.
        let second = q
            .enqueue(
                crate::queue::suite::request("second", "f", Some("http://b/")),
                Some("key-1".into()),
            )
            .await
            .unwrap();
        assert!(
            matches!(&second, Enqueued::Duplicate(id) if id == "first"),
            "{second:?}"
        );
        let key_entry = (idem_key("key-1"), key);
        let undone = undo(&q.kv, &record_key("first"), written, Some(&key_entry)).await;
        assert!(
            undone.is_err_and(|e| e.kind() == kv::DeleteErrorKind::WrongLastRevision),
            "the undo of the first enqueue must fail now"
        );
        assert_eq!(
            q.kv.entry(idem_key("key-1"))
                .await
                .unwrap()
                .unwrap()
                .revision,
            key
        );
        // The call runs once, from the copy the second request published, and its callback
        // is the first request's.
        let got = q.lease("w", 10, lease, &[]).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].request.call_id, "first");
        assert_eq!(got[0].request.callback_url.as_deref(), Some("http://a/"));
        // The second request's own record is undone (in the background).
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while q.read("second").await.unwrap().is_some() {
            assert!(std::time::Instant::now() < end, "the second record stays");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_dead_letter_copy_of_a_running_call_is_kept() {
        let server = NatsServer::start();
        let q = server.queue("faas-request").await;
        q.enqueue(crate::queue::suite::request("dying", "f", None), None)
            .await
            .unwrap();
        let got = q.lease("w", 1, Duration::from_secs(30), &[]).await.unwrap();
        assert_eq!(got.len(), 1);
        // Its owner is dead-lettering it: the copy is stored, the record not yet changed.
        q.js.publish(
            q.dead_subject("dying"),
            serde_json::to_vec(&got[0].request).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        // Listing (or redriving) meanwhile does not take the copy for a left-over.
        assert!(q.dead_letters().await.unwrap().is_empty());
        assert_eq!(q.redrive(Some("dying")).await.unwrap(), 0);
        assert_eq!(q.dlq.get_info().await.unwrap().state.messages, 1);
        // Once the record says it is dead, it is a dead letter.
        let outcome = Outcome {
            status: 500,
            headers: Vec::new(),
            body: b"boom".to_vec(),
            duration: 0.1,
            error: Some("boom".into()),
        };
        assert!(
            q.dead_letter("dying", "w", outcome, Duration::from_secs(30))
                .await
                .unwrap()
        );
        let dead = q.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(q.redrive(Some("dying")).await.unwrap(), 1);
        assert_eq!(q.dlq.get_info().await.unwrap().state.messages, 0);
    }

    #[test]
    fn direct_gets_conflict_only_where_they_are_used() {
        let wanted = stream::Config {
            name: "OBJ_x".into(),
            allow_direct: false,
            ..Default::default()
        };
        let found = stream::Config {
            allow_direct: true,
            ..wanted.clone()
        };
        let err = check_stream(&found, &wanted, false).unwrap_err();
        assert!(err.to_string().contains("allow_direct"), "{err}");
        assert!(check_stream(&found, &wanted, true).is_ok());
        assert!(check_stream(&wanted, &wanted, false).is_ok());
    }

    #[test]
    fn keys_round_trip() {
        for id in ["abc-123_X", "a.b:c", "ünï", "x.y"] {
            let key = record_key(id);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            );
            assert_eq!(call_id_from_key(&key).as_deref(), Some(id));
        }
        assert!(idem_key("any key / at all").starts_with("i."));
        assert_eq!(subject_token("fn.ns"), "fn_ns");
    }

    #[test]
    fn stream_names_are_checked() {
        assert!(Names::new("faas-request").is_ok());
        assert!(Names::new("bad.name").is_err());
        assert!(Names::new("").is_err());
        let n = Names::new("faas-request").unwrap();
        assert_eq!(n.workers, "faas-workers");
        assert_eq!(n.bucket, "faas-request-calls");
    }
}
