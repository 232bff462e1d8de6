//! Publishing a call's request message, idempotency and duplicates, and undoing an enqueue that
//! failed half-way.

use super::*;

/// Deletes a record if it is still at `revision`, and then the idempotency key entry if it is
/// still at its revision.
pub(super) async fn undo(
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

impl JetStreamQueue {
    /// Publishes a request message (deduplicated by `msg_id` inside the window). `revision`:
    /// that of the record [`Record::queued`] makes from this very request, as enqueue stored
    /// it, for the worker that takes the message (see [`Self::take`]).
    pub(super) async fn publish_request(
        &self,
        function: &str,
        msg_id: &str,
        payload: Bytes,
        revision: Option<u64>,
    ) -> Result<jetstream::publish::PublishAck, QueueError> {
        let mut message = Publish::build().payload(payload).message_id(msg_id);
        if let Some(revision) = revision {
            message = message.header(RECORD_REVISION, revision.to_string().as_str());
        }
        self.js
            .send_publish(
                format!("{}.{}", self.names.requests, subject_token(function)),
                message,
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
    pub(super) fn forget(&self, call_id: &str, revision: u64, key: Option<(String, u64)>) {
        let kv = self.kv.clone();
        let record = record_key(call_id);
        tokio::spawn(async move {
            // Tried again while the cluster cannot take it (an election), for FORGET_WITHIN.
            let deadline = tokio::time::Instant::now() + FORGET_WITHIN;
            let removed = within(
                deadline,
                FORGET_WITHIN,
                "remove what a failed enqueue stored",
                || async {
                    match undo(&kv, &record, revision, key.as_ref()).await {
                        Ok(()) => Ok(true),
                        Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(false),
                        Err(e) => Err(unavailable(e)),
                    }
                },
            )
            .await;
            match removed {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(key = record, "a failed enqueue's record is in use; kept");
                }
                Err(e) => {
                    tracing::warn!(key = record, error = %e, "cannot remove what a failed enqueue stored")
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
    pub(super) async fn duplicate(
        &self,
        call_id: &str,
        request: &QueueRequest,
        deadline: tokio::time::Instant,
    ) -> Result<Enqueued, QueueError> {
        let bound = self.config.enqueue_within;
        for _ in 0..CAS_ATTEMPTS {
            let read = within(deadline, bound, "read the call's record", || {
                self.read(call_id)
            })
            .await?;
            let Some(v) = read else {
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
            let written = within(deadline, bound, "store the call's record", || {
                self.write(&v.record, v.revision)
            })
            .await?;
            if written.is_none() {
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
            // No revision: the record may be a redriven one, which `Record::queued` does not
            // make again.
            let payload = Bytes::from(payload);
            within(deadline, bound, "publish the call's request", || {
                self.publish_request(&again.function, v.record.msg_id(), payload.clone(), None)
            })
            .await?;
            return Ok(Enqueued::Duplicate(call_id.to_string()));
        }
        Err(unavailable(Contended(call_id.to_string())))
    }
}

impl JetStreamQueue {
    /// [`Queue::enqueue`]: the status record, the idempotency key, then the request message; what
    /// fails half-way is undone. While the cluster cannot take a step (a leader election), the
    /// step is tried again until `enqueue_within` has passed since the enqueue began; then the
    /// caller hears "unavailable" (the gateway answers 503 with `Retry-After` and the call id,
    /// so a retry with that id is the same call).
    pub(super) async fn enqueue_call(
        &self,
        request: QueueRequest,
        idempotency_key: Option<String>,
    ) -> Result<Enqueued, QueueError> {
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
        let bound = self.config.enqueue_within;
        let deadline = tokio::time::Instant::now() + bound;
        let record = Record::queued(&request);
        // An attempt that timed out may have landed: the next one then finds the record, and
        // the call goes the duplicate way (its message published under the record's id).
        let created = within(deadline, bound, "store the call's record", || {
            self.write(&record, 0)
        })
        .await?;
        let Some(revision) = created else {
            return self.duplicate(&call_id, &request, deadline).await;
        };
        let forget = || self.forget(&call_id, revision, None);
        let mut key_revision = None;
        if let Some(key) = &idempotency_key {
            match self.claim_key(&call_id, key, deadline).await {
                Ok(Claim::Ours(r)) => key_revision = Some(r),
                Ok(Claim::Theirs(first)) => {
                    forget();
                    return self.duplicate(&first, &request, deadline).await;
                }
                Err(e) => {
                    forget();
                    return Err(e);
                }
            }
        }
        // The message id makes a retried publish that landed twice one message.
        let payload = Bytes::from(payload);
        let published = within(deadline, bound, "publish the call's request", || {
            self.publish_request(
                &request.function,
                record.msg_id(),
                payload.clone(),
                Some(revision),
            )
        })
        .await;
        match published {
            Ok(_) => Ok(Enqueued::New(call_id)),
            Err(e) => {
                let key = idempotency_key.as_deref().map(idem_key).zip(key_revision);
                self.forget(&call_id, revision, key);
                Err(e)
            }
        }
    }
}

/// Who an idempotency key names.
enum Claim {
    /// This call, at the key entry's revision.
    Ours(u64),
    /// Another call, live.
    Theirs(String),
}

impl JetStreamQueue {
    /// Claims idempotency key `key` for `call_id`, each step tried again through elections until
    /// `deadline`: the key is this call's if it names no call, names this one (a create whose
    /// answer was lost), or names a call whose enqueue failed and was undone.
    async fn claim_key(
        &self,
        call_id: &str,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Claim, QueueError> {
        let bound = self.config.enqueue_within;
        let ik = idem_key(key);
        let value = Bytes::from(call_id.to_string());
        let created = within(deadline, bound, "claim the idempotency key", || {
            self.create_entry(&ik, value.clone())
        })
        .await?;
        if let Some(r) = created {
            return Ok(Claim::Ours(r));
        }
        let (first, held_at) = match within(deadline, bound, "read the idempotency key", || {
            self.entry(&ik)
        })
        .await?
        {
            Stored::Found((value, at)) => (String::from_utf8_lossy(&value).into_owned(), at),
            _ => return Err(unavailable(Vanished(call_id.to_string()))),
        };
        if first == call_id {
            return Ok(Claim::Ours(held_at));
        }
        let live = within(deadline, bound, "read the call the key names", || {
            self.read(&first)
        })
        .await?;
        if live.is_some() {
            return Ok(Claim::Theirs(first));
        }
        // The first call's enqueue failed and was undone: the key is this call's now.
        match self.kv.update(&ik, value, held_at).await {
            Ok(r) => Ok(Claim::Ours(r)),
            Err(e) => Err(unavailable(e)),
        }
    }
}
