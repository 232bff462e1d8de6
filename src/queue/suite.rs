//! The behaviour every [`Queue`] backend must show, written against the trait so each backend's
//! tests run the same suite.

use std::time::Duration;

use super::{
    CallFilter, CallState, CallbackState, Cancelled, Cursor, Enqueued, Outcome, PageQuery, Queue,
    QueueRequest,
};

/// A request for `function` with call id `id`.
pub fn request(id: &str, function: &str, callback: Option<&str>) -> QueueRequest {
    QueueRequest {
        header: Default::default(),
        host: "gw".into(),
        body: b"payload".to_vec(),
        method: "POST".into(),
        path: "/".into(),
        query_string: String::new(),
        function: function.into(),
        callback_url: callback.map(str::to_string),
        call_id: id.into(),
        enqueued_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        attempt: 0,
    }
}

/// Enqueues one call with id `id`.
pub async fn enqueue_one(q: &dyn Queue, id: &str) {
    let r = q.enqueue(request(id, "f", None), None).await.unwrap();
    assert_eq!(r, Enqueued::New(id.to_string()));
}

/// Leases and finishes the call `id` (which must be the only one waiting).
pub async fn lease_one(q: &dyn Queue, id: &str) {
    let leased = q
        .lease("w", 10, Duration::from_secs(30), &[])
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].request.call_id, id);
    assert_eq!(leased[0].request.body, b"payload");
}

fn ok(status: u16) -> Outcome {
    Outcome {
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: b"result".to_vec(),
        duration: 0.01,
        error: None,
    }
}

/// Runs the whole suite on an empty queue.
pub async fn run(q: &dyn Queue) {
    let lease = Duration::from_secs(30);

    // Enqueue, duplicates by call id and by idempotency key.
    assert_eq!(
        q.enqueue(request("a", "f", Some("http://cb/")), None)
            .await
            .unwrap(),
        Enqueued::New("a".into())
    );
    assert_eq!(
        q.enqueue(request("a", "f", None), None).await.unwrap(),
        Enqueued::Duplicate("a".into())
    );
    assert_eq!(
        q.enqueue(request("b", "f", None), Some("key-1".into()))
            .await
            .unwrap(),
        Enqueued::New("b".into())
    );
    assert_eq!(
        q.enqueue(request("b2", "f", None), Some("key-1".into()))
            .await
            .unwrap(),
        Enqueued::Duplicate("b".into())
    );
    let st = q.status("a").await.unwrap().unwrap();
    assert_eq!(st.state, CallState::Queued);
    assert_eq!(st.attempts, 0);
    assert_eq!(q.stats().await.unwrap().depth, 2);
    // The oldest waiting call's age grows from its enqueue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while q.stats().await.unwrap().oldest_age <= 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "oldest_age stayed 0"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Busy functions are skipped (and come back); leases hand each call to one owner.
    assert!(
        q.lease("w1", 10, lease, &["f".into()])
            .await
            .unwrap()
            .is_empty()
    );
    let got = lease_soon(q, "w1", 1, lease).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.call_id, "a");
    assert_eq!(got[0].request.attempt, 1);
    let got2 = lease_soon(q, "w2", 10, lease).await;
    assert_eq!(got2.len(), 1);
    assert_eq!(got2[0].request.call_id, "b");
    assert!(q.lease("w3", 10, lease, &[]).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().in_flight, 2);
    assert!(q.extend("a", "w1", lease).await.unwrap());
    assert!(!q.extend("a", "w2", lease).await.unwrap());
    assert_eq!(
        q.status("a").await.unwrap().unwrap().state,
        CallState::Running
    );

    // Finish with a callback: the callback becomes due, once.
    assert!(q.finish("a", "w1", ok(200), Duration::ZERO).await.unwrap());
    let st = q.status("a").await.unwrap().unwrap();
    assert_eq!(st.state, CallState::Succeeded);
    assert_eq!(st.status_code, Some(200));
    assert_eq!(st.result.as_deref(), Some("result"));
    assert_eq!(st.callback, CallbackState::Pending);
    let due = q.due_callbacks(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].url, "http://cb/");
    assert_eq!(due[0].outcome.body, b"result");
    assert_eq!(due[0].outcome.headers[0].0, "content-type");
    assert!(
        q.due_callbacks(10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
    q.callback_result(
        "a",
        false,
        Some(Duration::ZERO),
        Some("receiver answered 500"),
    )
    .await
    .unwrap();
    let st = q.status("a").await.unwrap().unwrap();
    assert_eq!(st.callback_error.as_deref(), Some("receiver answered 500"));
    let due = q.due_callbacks(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery_attempts, 1);
    q.callback_result("a", true, None, None).await.unwrap();
    let st = q.status("a").await.unwrap().unwrap();
    assert_eq!(st.callback_error, None);
    assert_eq!(st.callback, CallbackState::Delivered);
    assert_eq!(st.callback_attempts, 2);

    // Retry later, then dead letter, redrive, purge.
    q.retry_later("b", "w2", Duration::ZERO, ok(503))
        .await
        .unwrap();
    assert_eq!(
        q.status("b").await.unwrap().unwrap().state,
        CallState::Retrying
    );
    let again = q.lease("w2", 10, lease, &[]).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].request.attempt, 2);
    q.dead_letter("b", "w2", ok(503), Duration::ZERO)
        .await
        .unwrap();
    let dead = q.dead_letters(&PageQuery::default()).await.unwrap().calls;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].call_id, "b");
    assert_eq!(dead[0].state, CallState::Failed);
    assert!(dead[0].dead_letter);
    assert_eq!(q.redrive(Some("b")).await.unwrap(), 1);
    assert!(
        q.dead_letters(&PageQuery::default())
            .await
            .unwrap()
            .calls
            .is_empty()
    );
    let again = q.lease("w2", 10, lease, &[]).await.unwrap();
    assert_eq!(again[0].request.call_id, "b");
    q.dead_letter("b", "w2", ok(500), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(q.purge(None).await.unwrap(), 1);
    assert!(q.status("b").await.unwrap().is_none());

    // An expired lease (a worker that died) makes the call leasable again.
    enqueue_request(q, "c").await;
    let first = q
        .lease("dead-worker", 10, Duration::from_millis(1), &[])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = q.lease("w", 10, lease, &[]).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].request.attempt, 2);
    // The dead worker's late outcome is ignored.
    q.finish("c", "dead-worker", ok(200), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        q.status("c").await.unwrap().unwrap().state,
        CallState::Running
    );
    q.finish("c", "w", ok(404), Duration::ZERO).await.unwrap();
    assert_eq!(
        q.status("c").await.unwrap().unwrap().state,
        CallState::Failed
    );

    // Cancel: only before it ran.
    enqueue_request(q, "d").await;
    assert_eq!(q.cancel("d").await.unwrap(), Cancelled::Yes);
    assert_eq!(
        q.status("d").await.unwrap().unwrap().state,
        CallState::Cancelled
    );
    assert!(q.lease("w", 10, lease, &[]).await.unwrap().is_empty());
    assert_eq!(
        q.cancel("c").await.unwrap(),
        Cancelled::TooLate(CallState::Failed)
    );
    assert_eq!(q.cancel("nope").await.unwrap(), Cancelled::NotFound);
    assert!(q.status("nope").await.unwrap().is_none());

    // A callback result for a call whose callback is no longer pending is ignored.
    q.callback_result(
        "a",
        false,
        Some(Duration::ZERO),
        Some("receiver answered 500"),
    )
    .await
    .unwrap();
    assert_eq!(
        q.status("a").await.unwrap().unwrap().callback,
        CallbackState::Delivered
    );

    // Released leases go back to the front without counting an attempt.
    enqueue_request(q, "r1").await;
    let got = q.lease("w", 10, lease, &[]).await.unwrap();
    assert_eq!(got.len(), 1);
    q.release(&["r1".to_string()], "w").await.unwrap();
    let st = q.status("r1").await.unwrap().unwrap();
    assert_eq!(st.state, CallState::Queued);
    assert_eq!(st.attempts, 0);
    let again = lease_soon(q, "w", 10, lease).await;
    assert_eq!(again[0].request.call_id, "r1");
    assert_eq!(again[0].request.attempt, 1);
    assert!(q.finish("r1", "w", ok(200), Duration::ZERO).await.unwrap());

    // Fairness: a busy function does not block another's calls.
    enqueue_request(q, "e1").await;
    q.enqueue(request("g1", "g", None), None).await.unwrap();
    let got = q.lease("w", 10, lease, &["f".into()]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.function, "g");
}

/// Leases, polling for up to two seconds until something comes: calls skipped as busy or
/// released come back at once on some backends and after a short hand-back delay on others.
async fn lease_soon(q: &dyn Queue, owner: &str, max: usize, lease: Duration) -> Vec<super::Leased> {
    let end = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let got = q.lease(owner, max, lease, &[]).await.unwrap();
        if !got.is_empty() || std::time::Instant::now() > end {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn enqueue_request(q: &dyn Queue, id: &str) {
    assert_eq!(
        q.enqueue(request(id, "f", None), None).await.unwrap(),
        Enqueued::New(id.to_string())
    );
}

/// Listing calls (newest first, filtered, paged) and dead letters (oldest first, paged) on an
/// empty queue.
pub async fn listing(q: &dyn Queue) {
    let mut at = 1_000_000;
    for (id, function) in [
        ("l1", "f"),
        ("l2", "g"),
        ("l3", "f"),
        ("l4", "f"),
        ("l5", "g"),
    ] {
        let mut r = request(id, function, None);
        at += 10;
        r.enqueued_at = at;
        q.enqueue(r, None).await.unwrap();
    }
    let ids = |page: &super::CallPage| -> Vec<String> {
        page.calls.iter().map(|c| c.call_id.clone()).collect()
    };
    let all = CallFilter::default();
    let mut page = PageQuery {
        limit: 2,
        after: None,
    };
    let mut seen = Vec::new();
    loop {
        let got = q.list_calls(&all, &page).await.unwrap();
        seen.extend(ids(&got));
        match got.next {
            Some(next) => page.after = Some(Cursor::parse(&next).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, ["l5", "l4", "l3", "l2", "l1"]);
    let only_f = CallFilter {
        function: Some("f".into()),
        state: None,
    };
    let got = q.list_calls(&only_f, &PageQuery::default()).await.unwrap();
    assert_eq!(ids(&got), ["l4", "l3", "l1"]);
    assert!(got.next.is_none());

    // One runs, one fails for good into the dead-letter set.
    let mut leased = Vec::new();
    while leased.len() < 5 {
        let more = lease_soon(q, "w", 10, Duration::from_secs(30)).await;
        assert!(!more.is_empty(), "every call can be leased");
        leased.extend(more);
    }
    for l in &leased {
        let id = l.request.call_id.as_str();
        if id == "l1" || id == "l2" {
            q.dead_letter(id, "w", ok(500), Duration::ZERO)
                .await
                .unwrap();
        } else if id != "l3" {
            q.release(&[id.to_string()], "w").await.unwrap();
        }
    }
    let running = CallFilter {
        function: None,
        state: Some(CallState::Running),
    };
    let got = q.list_calls(&running, &PageQuery::default()).await.unwrap();
    assert_eq!(ids(&got), ["l3"]);
    let first = q
        .dead_letters(&PageQuery {
            limit: 1,
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(ids(&first), ["l1"]);
    let rest = q
        .dead_letters(&PageQuery {
            limit: 1,
            after: first.next.as_deref().and_then(Cursor::parse),
        })
        .await
        .unwrap();
    assert_eq!(ids(&rest), ["l2"]);
    assert!(rest.next.is_none());
    assert_eq!(q.stats().await.unwrap().dead_letters, 2);
}
