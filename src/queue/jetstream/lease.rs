//! Leases: fetching from the shared consumer, taking a call (or handing it back), and the messages
//! a worker holds while calls run.

use super::*;

/// Up to `max` messages from `consumer`, without waiting for more. Bounded in time: a no-wait
/// pull whose end marker is lost (a connection drop, a server race) must not hang the worker.
/// Messages received before an error are returned.
pub(super) async fn fetch(consumer: &PullConsumer, max: usize) -> Result<Vec<Message>, QueueError> {
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

/// A worker slot a lease has reserved for a call, given back unless kept.
pub(super) struct Slot<'a>(Option<&'a AtomicUsize>);

impl Slot<'_> {
    /// The call is taken: the slot stays used.
    pub(super) fn keep(&mut self) {
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
pub(super) enum Decision {
    /// It is ours now.
    Take,
    /// It is left over: ack it away.
    Drop,
    /// Not yet: hand it back for this long.
    Later(Duration),
    /// It carries a finished call's callback nobody is delivering: queue the callback.
    Callback,
}

/// The record enqueue stored for the request in `message`, at the revision the message names:
/// [`Record::queued`] of the same request, under the message's id.
fn enqueued_record(message: &Message, request: &QueueRequest) -> Option<Versioned> {
    let headers = message.headers.as_ref()?;
    let revision = headers.get(RECORD_REVISION)?.as_str().parse().ok()?;
    let msg_id = headers.get(async_nats::header::NATS_MESSAGE_ID)?.as_str();
    let mut record = Record::queued(request);
    record.msg_id = Some(msg_id.to_string());
    Some(Versioned { record, revision })
}

/// Logs a lost lease.
pub(super) fn lease_lost(call_id: &str) {
    tracing::warn!(
        call_id,
        "lease lost before the outcome was recorded; another worker owns the call"
    );
}

impl JetStreamQueue {
    /// Takes one fetched request message for `owner`, or hands it back.
    pub(super) async fn take(
        &self,
        message: Message,
        owner: &str,
        lease: Duration,
        busy: &[String],
        slots: &AtomicUsize,
    ) -> Result<Option<Leased>, QueueError> {
        let (seq, delivered) = {
            let info = message.info().map_err(boxed)?;
            (info.stream_sequence, info.delivered)
        };
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
        // On its first delivery, the record as enqueue stored it, from the message, saves a
        // read: should it have changed since, the compare-and-set below fails and the loop
        // reads it. A message delivered again (handed back, a lease run out, a callback it
        // carries) has most likely changed: read first.
        let mut enqueued = if delivered == 1 {
            enqueued_record(&message, &request)
        } else {
            None
        };
        for _ in 0..CAS_ATTEMPTS {
            let found = match enqueued.take() {
                Some(v) => Stored::Found(Box::new(v)),
                None => self.lookup(&request.call_id).await?,
            };
            let (mut record, revision) = match found {
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
                // Finished, its callback carried by this message: the worker delivering it has
                // it until the claim lapses; then (that worker died or is stuck) it is queued.
                _ if record.carries_callback() => match record.callback_due {
                    Some(t) if t > now.saturating_add(5) => {
                        Decision::Later(Duration::from_millis(t - now))
                    }
                    _ => Decision::Callback,
                },
                // Finished, dead-lettered or cancelled: this message is left over.
                _ => Decision::Drop,
            };
            match decision {
                Decision::Drop => {
                    tracing::debug!(call_id = %request.call_id, seq, delivered, state = ?record.state, "left-over request message dropped");
                    message.ack().await.map_err(boxed)?;
                    return Ok(None);
                }
                Decision::Later(d) => {
                    tracing::debug!(call_id = %request.call_id, seq, delivered, state = ?record.state, later = ?d, "request message handed back");
                    message.ack_with(nak(d)).await.map_err(boxed)?;
                    return Ok(None);
                }
                Decision::Callback => {
                    tracing::debug!(call_id = %request.call_id, seq, delivered, "request message carries a callback nobody delivers: queueing it");
                    let current = Versioned { record, revision };
                    if self
                        .move_callback(&request.call_id, Some(current), &message, now, |_| {})
                        .await?
                    {
                        return Ok(None);
                    }
                    continue;
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
    pub(super) fn held_message(&self, call_id: &str, owner: &str) -> Option<Message> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(call_id)
            .filter(|h| h.owner == owner)
            .map(|h| h.message.clone())
    }

    /// The ack that restarts a lease of `lease`: `in_progress` when it is the consumer's
    /// `ack_wait`, else a nak delayed by it (the server treats both as "still working").
    pub(super) fn renewal(&self, lease: Duration) -> AckKind {
        if lease == self.ack_wait {
            AckKind::Progress
        } else {
            nak(lease)
        }
    }

    /// Removes and returns the message `owner` leased for `call_id`: the call is being settled
    /// (if settling fails, the message comes back after its lease and is taken again).
    pub(super) fn take_held(&self, call_id: &str, owner: &str) -> Option<Held> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(call_id).is_some_and(|h| h.owner == owner) {
            held.remove(call_id)
        } else {
            None
        }
    }
}

impl JetStreamQueue {
    /// [`Queue::release`]: hands leased calls back for another worker.
    pub(super) async fn release_calls(
        &self,
        call_ids: &[String],
        owner: &str,
    ) -> Result<(), QueueError> {
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
                Ok(Some((true, _))) => message.double_ack_with(nak(HAND_BACK)).await.map_err(boxed),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(call_id, error = %crate::http::proxy::error_chain(&e), "cannot hand a call back; it returns after its lease");
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}
