//! Carried callbacks against a real nats-server: a worker that dies before delivering, and a
//! server killed while outcomes are being recorded.
use super::tests::NatsServer;
use super::*;
use crate::queue::suite::request;

#[tokio::test]
async fn a_callback_carried_by_its_request_message_survives_its_worker() {
    let server = NatsServer::start();
    let outcome = Outcome {
        status: 201,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: b"done".to_vec(),
        duration: 0.25,
        error: None,
    };
    let dying = server.queue("carried").await;
    dying
        .enqueue(request("c1", "f", Some("http://cb/")), None)
        .await
        .unwrap();
    // A short lease: the request message comes back soon after its worker is gone.
    let got = dying
        .lease("w1", 1, Duration::from_millis(300), &[])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    // Claim 0: the callback is overdue at once for any other worker.
    assert!(
        dying
            .finish("c1", "w1", outcome.clone(), Duration::ZERO)
            .await
            .unwrap()
    );
    // One write recorded it: no callback message, the request message still held.
    let st = dying.status("c1").await.unwrap().unwrap();
    assert_eq!(st.state, CallState::Succeeded);
    assert_eq!(st.callback, CallbackState::Pending);
    assert_eq!(st.result.as_deref(), Some("done"));
    assert_eq!(dying.callbacks.get_info().await.unwrap().state.messages, 0);
    assert_eq!(dying.requests.get_info().await.unwrap().state.messages, 1);
    // Its worker dies before delivering.
    drop(dying);

    // Another worker meets the request message again and queues the callback from the record.
    let q = server.queue("carried").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let jobs = loop {
        assert!(
            q.lease("w2", 10, Duration::from_secs(30), &[])
                .await
                .unwrap()
                .is_empty()
        );
        let jobs = q.due_callbacks(10, Duration::from_secs(60)).await.unwrap();
        if !jobs.is_empty() {
            break jobs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the carried callback was never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].url, "http://cb/");
    assert_eq!(jobs[0].outcome, outcome);
    assert_eq!(jobs[0].attempts, 1);
    q.callback_result("c1", true, None, None).await.unwrap();
    let st = q.status("c1").await.unwrap().unwrap();
    assert_eq!(st.callback, CallbackState::Delivered);
    assert_eq!(st.callback_attempts, 1);
    assert!(
        q.due_callbacks(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.requests.get_info().await.unwrap().state.messages, 0);
    assert_eq!(q.callbacks.get_info().await.unwrap().state.messages, 0);

    // A carried callback whose first delivery failed moves to the callback stream, with the
    // attempt counted; one delivered at once leaves nothing behind.
    for id in ["c2", "c3"] {
        q.enqueue(request(id, "f", Some("http://cb/")), None)
            .await
            .unwrap();
        let got = q
            .lease("w2", 1, Duration::from_secs(30), &[])
            .await
            .unwrap();
        assert_eq!(got[0].request.call_id, id);
        assert!(
            q.finish(id, "w2", outcome.clone(), Duration::from_secs(60))
                .await
                .unwrap()
        );
    }
    q.callback_result(
        "c2",
        false,
        Some(Duration::ZERO),
        Some("receiver answered 500"),
    )
    .await
    .unwrap();
    q.callback_result("c3", true, None, None).await.unwrap();
    let jobs = q.due_callbacks(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].call_id, "c2");
    assert_eq!(jobs[0].delivery_attempts, 1);
    assert_eq!(jobs[0].outcome, outcome);
    let st = q.status("c2").await.unwrap().unwrap();
    assert_eq!(st.callback_error.as_deref(), Some("receiver answered 500"));
    q.callback_result("c2", true, None, None).await.unwrap();
    for id in ["c2", "c3"] {
        let st = q.status(id).await.unwrap().unwrap();
        assert_eq!(st.callback, CallbackState::Delivered, "{id}");
    }
    // The acks of the request messages are not waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while q.requests.get_info().await.unwrap().state.messages > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "request messages left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(q.callbacks.get_info().await.unwrap().state.messages, 0);
}

/// The outcome's write landed but its answer was lost and the server restarted, so the worker
/// never delivered the carried callback: the request message comes back (before the worker's
/// claim lapses: it is handed back until then) and the callback is queued from the record,
/// in the same process, once the claim has lapsed.
#[tokio::test]
async fn a_carried_callback_whose_record_answer_was_lost_is_still_delivered() {
    let mut server = NatsServer::start();
    let q = server.queue_leasing("lost", Duration::from_secs(2)).await;
    // Longer than the lease: the message comes back while the claim holds.
    let claim = Duration::from_secs(8);
    let start = std::time::Instant::now();
    finish_carrying(&q, claim).await;
    // What the worker knows after a lost answer: nothing settled, the message dropped unacked.
    let settled = q
        .settled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove("c1");
    assert!(settled.is_some_and(|s| s.carrier.is_some()));
    server.restart();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        match q.lease("w1", 10, Duration::from_secs(2), &[]).await {
            Ok(got) => assert!(got.is_empty()),
            Err(e) => eprintln!("lease: {e}"),
        }
        match q.due_callbacks(10, Duration::from_secs(60)).await {
            Ok(jobs) if !jobs.is_empty() => break jobs,
            Ok(_) => {}
            Err(e) => eprintln!("due: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the carried callback was never queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(jobs[0].call_id, "c1");
    assert!(start.elapsed() >= claim, "queued within the worker's claim");
}

/// Enqueues call `c1` with a callback, leases it as `w1` and finishes it with `claim`: its
/// callback is carried by its request message, which `w1` holds.
async fn finish_carrying(q: &JetStreamQueue, claim: Duration) {
    q.enqueue(request("c1", "f", Some("http://cb/")), None)
        .await
        .unwrap();
    let got = q.lease("w1", 1, Duration::from_secs(2), &[]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(q.finish("c1", "w1", ok_outcome(), claim).await.unwrap());
}

fn ok_outcome() -> Outcome {
    Outcome {
        status: 200,
        headers: Vec::new(),
        body: b"done".to_vec(),
        duration: 0.1,
        error: None,
    }
}

/// Leases `calls` calls of a fresh queue on `server`, records their outcomes at once with
/// `claim`, and kills the server as soon as the first is recorded, starting it again after
/// `down`. The calls whose outcome was recorded (the first delivery of their callback is the
/// caller's), and how many finished with an error (unsure whether it landed).
async fn finish_through_a_kill(
    server: &mut NatsServer,
    stream: &str,
    calls: usize,
    claim: Duration,
    down: Duration,
) -> (std::sync::Arc<JetStreamQueue>, Vec<String>, usize) {
    let q = std::sync::Arc::new(server.queue_leasing(stream, Duration::from_secs(2)).await);
    for i in 0..calls {
        q.enqueue(request(&format!("k{i}"), "f", Some("http://cb/")), None)
            .await
            .unwrap();
    }
    let got = q
        .lease("w1", calls, Duration::from_secs(2), &[])
        .await
        .unwrap();
    assert_eq!(got.len(), calls);
    let mut finishing = tokio::task::JoinSet::new();
    for call in got {
        let q = std::sync::Arc::clone(&q);
        finishing.spawn(async move {
            let id = call.request.call_id;
            let r = q.finish(&id, "w1", ok_outcome(), claim).await;
            (id, r)
        });
    }
    // Killed as soon as the first outcome is recorded: the others are on their way.
    let first = finishing.join_next().await.unwrap().unwrap();
    server.kill();
    tokio::time::sleep(down).await;
    server.start_again();
    let (mut recorded, mut unsure) = (Vec::new(), 0);
    let mut record = |(id, r): (String, Result<bool, QueueError>)| match r {
        Ok(true) => recorded.push(id),
        _ => unsure += 1,
    };
    record(first);
    while let Some(joined) = finishing.join_next().await {
        record(joined.unwrap());
    }
    for id in &recorded {
        delivered_once(&q, id).await;
    }
    (q, recorded, unsure)
}

/// The server is killed while many outcomes are being recorded and is back within the
/// callbacks' claim: every finish recognises its write once it is back (landed or not before
/// the kill), so every callback is the worker's to deliver at once.
#[tokio::test]
async fn outcomes_recorded_through_a_server_restart_are_all_known() {
    let mut server = NatsServer::start();
    let (_q, recorded, unsure) = finish_through_a_kill(
        &mut server,
        "restarted",
        60,
        Duration::from_secs(20),
        // Longer than the lease (2 s), which bounded the writes before.
        Duration::from_secs(3),
    )
    .await;
    assert_eq!((recorded.len(), unsure), (60, 0));
}

/// The server is killed while many outcomes are being recorded, and comes back only after the
/// finishes gave up: every call still gets its callback (from the record its request message
/// finds when it comes back), or runs again and gets it then.
#[tokio::test]
async fn callbacks_survive_a_server_down_longer_than_the_finish() {
    const CALLS: usize = 60;
    let mut server = NatsServer::start();
    let claim = Duration::from_secs(2);
    let (q, recorded, unsure) =
        finish_through_a_kill(&mut server, "killed", CALLS, claim, Duration::from_secs(3)).await;
    assert_eq!(recorded.len() + unsure, CALLS);
    let mut delivered: std::collections::HashSet<String> = recorded.into_iter().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while delivered.len() < CALLS {
        match q.lease("w1", 10, Duration::from_secs(2), &[]).await {
            Ok(got) => {
                for call in got {
                    let id = call.request.call_id;
                    if q.finish(&id, "w1", ok_outcome(), claim).await.unwrap() {
                        delivered_once(&q, &id).await;
                        delivered.insert(id);
                    }
                }
            }
            Err(e) => eprintln!("lease: {e}"),
        }
        match q.due_callbacks(10, Duration::from_secs(60)).await {
            Ok(jobs) => {
                for job in jobs {
                    delivered_once(&q, &job.call_id).await;
                    delivered.insert(job.call_id);
                }
            }
            Err(e) => eprintln!("due: {e}"),
        }
        if std::time::Instant::now() >= deadline {
            let mut missing = Vec::new();
            for i in 0..CALLS {
                let id = format!("k{i}");
                if !delivered.contains(&id) {
                    let st = q.status(&id).await.unwrap();
                    missing.push(format!("{id}: {st:?}"));
                }
            }
            panic!(
                "{} callbacks never queued:\n{}",
                missing.len(),
                missing.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records a callback's delivery, through the server's start-up.
async fn delivered_once(q: &JetStreamQueue, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = q.callback_result(id, true, None, None).await {
        assert!(std::time::Instant::now() < deadline, "{id}: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A carried callback being moved to the callback stream: its message is published before the
/// record names it. A dispatcher that fetches it in between hands it back rather than dropping
/// it (which lost the callback once the record named it), and takes it once the record does.
#[tokio::test]
async fn a_callback_message_fetched_before_its_record_names_it_is_kept() {
    let server = NatsServer::start();
    let q = server.queue_leasing("moving", Duration::from_secs(2)).await;
    let claim = Duration::from_secs(60);
    finish_carrying(&q, claim).await;
    let current = q.read("c1").await.unwrap().unwrap();
    assert!(current.record.carries_callback());

    // The move's first step: the callback message.
    let (seq, object) = q
        .publish_callback(
            &current.record,
            "http://cb/",
            &current.record.outcome(),
            "moving",
        )
        .await
        .unwrap();
    assert!(q.due_callbacks(10, claim).await.unwrap().is_empty());
    assert_eq!(q.callbacks.get_info().await.unwrap().state.messages, 1);

    // Its second: the record names it, due now.
    let now = unix_ms();
    q.modify_from("c1", Some(current), |record| {
        record.callback_seq = Some(seq);
        record.callback_object.clone_from(&object);
        record.callback_due = Some(now);
        Step::Write(())
    })
    .await
    .unwrap()
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let jobs = loop {
        let jobs = q.due_callbacks(10, claim).await.unwrap();
        if !jobs.is_empty() {
            break jobs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the callback message was lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].call_id, "c1");
    assert_eq!(jobs[0].outcome, ok_outcome());
}
