//! The shared backend suite and JetStream's own cases, against a real nats-server.
use super::enqueue::undo;
use super::*;

/// A `nats-server -js` of the test's own, on a free port with a temporary store.
pub struct NatsServer {
    child: std::process::Child,
    /// Its URL.
    pub url: String,
    /// Its port, kept across a restart.
    port: u16,
    /// Its store, kept across a restart.
    store: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let store = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = spawn_server(port, store.path());
        NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a killed server again on the same port and store.
    pub fn start_again(&mut self) {
        self.child = spawn_server(self.port, self.store.path());
    }

    pub async fn queue(&self, stream: &str) -> JetStreamQueue {
        self.queue_leasing(stream, Duration::from_secs(30)).await
    }

    /// [`Self::queue`] with the workers' consumer created with `lease` as its `ack_wait`.
    pub async fn queue_leasing(&self, stream: &str, lease: Duration) -> JetStreamQueue {
        JetStreamQueue::connect(JetStreamConfig {
            url: self.url.clone(),
            stream: stream.into(),
            replicas: 1,
            retention: Duration::from_secs(3600),
            result_cap: 64 * 1024,
            lease,
            enqueue_within: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        })
        .await
        .unwrap()
    }
}

/// `nats-server -js` on `port` with its store in `store`.
fn spawn_server(port: u16, store: &std::path::Path) -> std::process::Child {
    // On PATH, or where Debian puts it (not on a non-root PATH).
    let debian = std::path::Path::new("/usr/sbin/nats-server");
    let bin = if debian.is_file() {
        debian
    } else {
        std::path::Path::new("nats-server")
    };
    std::process::Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server must be installed (Debian package nats-server) to test the JetStream queue")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn passes_the_shared_suite() {
    let server = NatsServer::start();
    let queue = server.queue("faas-request").await;
    crate::queue::suite::run(&queue).await;
}

#[tokio::test]
async fn lists_calls_and_dead_letters_by_page() {
    let server = NatsServer::start();
    let queue = server.queue("faas-request").await;
    crate::queue::suite::listing(&queue).await;
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
        enqueue_within: Duration::from_secs(5),
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
    assert_eq!(
        q.dead_letters(&crate::queue::PageQuery::default())
            .await
            .unwrap()
            .calls[0]
            .call_id,
        "dl"
    );
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
    assert!(
        q.dead_letters(&crate::queue::PageQuery::default())
            .await
            .unwrap()
            .calls
            .is_empty()
    );
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
    let dead = q
        .dead_letters(&crate::queue::PageQuery::default())
        .await
        .unwrap()
        .calls;
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
