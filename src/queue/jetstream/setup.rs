//! The server layout: stream, consumer, bucket and object store names, created or checked at start-
//! up (a conflicting setting is an error, never changed), and connecting.

use super::*;

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
    /// An existing consumer acknowledges otherwise than this process needs.
    #[error(
        "JetStream consumer {name:?} exists with ack policy {found}; this gateway needs explicit \
         acks (delete the consumer to have it made again)"
    )]
    AckPolicy {
        /// The consumer.
        name: String,
        /// Its ack policy.
        found: String,
    },
    /// A server URL in `--queue` cannot be parsed.
    #[error(
        "invalid --queue (queue) server {url:?}: {reason}; expected nats://HOST:PORT (or tls://), several comma-separated for a cluster"
    )]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The stream name is not usable.
    #[error(
        "invalid --nats-stream {0:?}: use letters, digits, - and _ (it names streams, subjects and a bucket)"
    )]
    Name(String),
}

/// Names of everything on the server, from the stream name.
#[derive(Debug, Clone)]
pub(super) struct Names {
    /// Request stream and subject prefix.
    pub(super) requests: String,
    /// The shared worker consumer.
    pub(super) workers: String,
    /// Dead-letter stream and subject prefix.
    pub(super) dlq: String,
    /// Callback stream and subject prefix.
    pub(super) callbacks: String,
    /// The callback consumer.
    pub(super) dispatchers: String,
    /// Key-value bucket of status records.
    pub(super) bucket: String,
    /// Object store of large callback bodies.
    pub(super) results: String,
}

impl Names {
    pub(super) fn new(stream: &str) -> Result<Self, SetupError> {
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

/// Whether an existing stream can serve: the settings that matter must match.
/// `allow_direct` is compared unless `direct_either`: a stream this process reads only from
/// its leader serves with either setting.
pub(super) fn check_stream(
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
pub(super) async fn ensure_stream(
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
pub(super) async fn ensure_consumer(
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
        return Err(SetupError::AckPolicy {
            name,
            found: format!("{:?}", found.ack_policy),
        });
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

/// The servers of a `--queue` value: one or more `nats://HOST:PORT` (or `tls://`) URLs,
/// comma-separated (spaces around them allowed). Any one of them that is up is enough to
/// connect; the client learns the rest of the cluster from it.
pub fn servers(list: &str) -> Result<Vec<async_nats::ServerAddr>, SetupError> {
    let mut servers = Vec::new();
    for url in list.split(',').map(str::trim) {
        let invalid = |reason: String| SetupError::Url {
            url: url.to_string(),
            reason,
        };
        if url.is_empty() {
            return Err(invalid("empty".into()));
        }
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(invalid("not a nats:// or tls:// URL".into()));
        }
        servers.push(
            url.parse()
                .map_err(|e: std::io::Error| invalid(e.to_string()))?,
        );
    }
    Ok(servers)
}

/// Connects to any of the servers, retrying until `deadline` (`connect_timeout` from the
/// start); later losses reconnect forever.
async fn connect(
    config: &JetStreamConfig,
    deadline: tokio::time::Instant,
) -> Result<async_nats::Client, SetupError> {
    let servers = servers(&config.url)?;
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
        match options.connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(source) => {
                if tokio::time::Instant::now() + delay > deadline {
                    return Err(SetupError::Connect {
                        url: config.url.clone(),
                        timeout: config.connect_timeout,
                        source,
                    });
                }
                tracing::warn!(servers = %config.url, error = %source, "NATS not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl JetStreamQueue {
    /// Connects, then creates or checks the streams, consumers and buckets, waiting up to
    /// `connect_timeout` in all for a server that answers and a JetStream that can take them:
    /// a cluster starting beside this process has no JetStream leader for a while, and its
    /// requests time out or are refused meanwhile. A setting that conflicts with what exists
    /// is an error at once.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, SetupError> {
        let names = Names::new(&config.stream)?;
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let client = connect(&config, deadline).await?;
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::set_up(&config, &names, &client).await {
                Ok(queue) => return Ok(queue),
                Err(e @ SetupError::JetStream { .. })
                    if tokio::time::Instant::now() + delay < deadline =>
                {
                    let error = crate::http::proxy::error_chain(&e);
                    tracing::warn!(%error, "JetStream not ready yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates or checks everything on the server, once.
    async fn set_up(
        config: &JetStreamConfig,
        names: &Names,
        client: &async_nats::Client,
    ) -> Result<Self, SetupError> {
        let (config, names, client) = (config.clone(), names.clone(), client.clone());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_are_one_or_a_comma_separated_list() {
        assert_eq!(servers("nats://127.0.0.1:4222").unwrap().len(), 1);
        let three = servers("nats://a:4222, nats://b:4223,tls://c:4224").unwrap();
        assert_eq!(three.len(), 3);
        assert_eq!(three[1].port(), 4223);
        for bad in [
            "nats://a:4222,nats://b:99999",
            "nats://a:4222,",
            "nats://a:4222,http://b:80",
            "nats://a:port",
        ] {
            let err = servers(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid --queue"), "{bad}: {err}");
        }
    }
}
