//! Pending callbacks: their messages, stored bodies too large for one, claiming one to deliver,
//! and recording how its delivery went.

use super::*;

/// How long a callback message is handed back while the record it was published for is
/// still being written to name it (one round trip, an election at worst).
const MOVING: Duration = Duration::from_secs(1);

/// Acks a request message that carried a callback no longer needing it (delivered, given up,
/// or moved to the callback stream). Not waited for: should the ack be lost, the message comes
/// back after its lease and is dropped, its record no longer carrying the callback.
async fn release_carrier(call_id: &str, carrier: &Message) {
    if let Err(e) = carrier.ack().await {
        tracing::debug!(call_id, error = %e, "cannot ack a request message that carried a callback");
    }
}

/// Why a stored callback body could not be read.
pub(super) enum BodyError {
    /// It is not there (expired or removed).
    Gone,
    /// The server failed.
    Queue(QueueError),
}

impl JetStreamQueue {
    /// Publishes the callback message of a finished call; its sequence and the object holding
    /// its body, if the body did not fit. `tag` names this outcome (its worker and attempt): a
    /// publish tried again after its answer was lost is the same message and the same object.
    pub(super) async fn publish_callback(
        &self,
        record: &Record,
        url: &str,
        outcome: &Outcome,
        tag: &str,
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
            let name = format!("{}#{tag}", record.call_id);
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
                Publish::build()
                    .payload(payload.into())
                    .message_id(format!("callback:{}:{tag}", record.call_id)),
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok((ack.sequence, message.body_object))
    }

    /// Removes a callback message and its stored body (best effort: a leftover is dropped by
    /// whichever dispatcher sees it).
    pub(super) async fn remove_callback(&self, seq: u64, object: Option<&str>) {
        if let Err(e) = self.callbacks.delete_message(seq).await {
            tracing::debug!(seq, error = %e, "callback message already gone");
        }
        if let Some(name) = object
            && let Err(e) = self.results.delete(name).await
        {
            tracing::debug!(object = name, error = %e, "stored callback body already gone");
        }
    }

    /// Decides about one fetched callback message: a job to deliver now, or nothing.
    pub(super) async fn claim_callback(
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
            Some(r) if r.callback == CallbackState::Pending && r.callback_seq == Some(seq) => {
                match r.callback_due {
                    Some(due) if due > now => Decision::Later(Duration::from_millis(due - now)),
                    _ => Decision::Take,
                }
            }
            // Its outcome is not recorded yet (the worker is between the two steps).
            Some(r)
                if r.callback == CallbackState::None
                    && r.state == CallState::Running
                    && r.attempts == cb.attempts =>
            {
                Decision::Later(claim)
            }
            // A callback carried by its request message is being moved here: this message is
            // published, the record does not name it yet (see [`Self::move_callback`]). Once
            // the record names it, it is taken; if the move loses, it removes the message, or
            // the record names another and it is dropped then.
            Some(r) if r.carries_callback() && r.attempts == cb.attempts => Decision::Later(MOVING),
            // Delivered, given up, superseded, or the call is gone.
            _ => Decision::Drop,
        };
        match decision {
            Decision::Drop => {
                tracing::debug!(call_id = %cb.call_id, seq, "left-over callback message dropped");
                message.ack().await.map_err(boxed)?;
                if let Some(name) = &cb.body_object
                    && record.is_none_or(|r| r.callback_object.as_ref() != Some(name))
                {
                    let _ = self.results.delete(name).await;
                }
                return Ok(None);
            }
            Decision::Later(d) => {
                tracing::debug!(call_id = %cb.call_id, seq, later = ?d, "callback message handed back");
                message.ack_with(nak(d)).await.map_err(boxed)?;
                return Ok(None);
            }
            // (`Callback` is for request messages.)
            Decision::Take | Decision::Callback => {
                tracing::debug!(call_id = %cb.call_id, seq, "callback taken for delivery");
            }
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

    pub(super) async fn read_body(&self, name: &str) -> Result<Vec<u8>, BodyError> {
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
}

impl JetStreamQueue {
    /// Moves a callback carried by its request message (`carrier`) into a callback message due
    /// at `due`, editing the record with `edit` in the same write, then acks the request
    /// message. False when the record no longer carries one (delivered, or moved by another
    /// worker meanwhile): nothing was changed, and the request message is not needed any more.
    pub(super) async fn move_callback(
        &self,
        call_id: &str,
        current: Option<Versioned>,
        carrier: &Message,
        due: u64,
        edit: impl Fn(&mut Record),
    ) -> Result<bool, QueueError> {
        let current = match current {
            Some(v) => v,
            None => match self.read(call_id).await? {
                Some(v) => v,
                None => return Ok(false),
            },
        };
        let record = &current.record;
        let (Some(url), true) = (&record.callback_url, record.carries_callback()) else {
            return Ok(false);
        };
        let (seq, object) = self
            .publish_callback(
                record,
                url,
                &record.outcome(),
                &uuid::Uuid::new_v4().to_string(),
            )
            .await?;
        let moved = self
            .modify_from(call_id, Some(current), |record| {
                if !record.carries_callback() {
                    return Step::Keep(false);
                }
                edit(record);
                record.callback_seq = Some(seq);
                record.callback_object.clone_from(&object);
                record.callback_due = Some(due);
                Step::Write(true)
            })
            .await;
        match moved {
            Ok(Some((true, _))) => {
                release_carrier(call_id, carrier).await;
                Ok(true)
            }
            Ok(_) => {
                self.remove_callback(seq, object.as_deref()).await;
                Ok(false)
            }
            // The write may have landed although its answer was lost: the message stays (a
            // dispatcher hands it back while the record still carries the callback, and drops
            // it once the record names another).
            Err(e) => Err(e),
        }
    }

    /// Callbacks this process carries on request messages whose claim has lapsed (its own
    /// delivery is slow or stuck) move to the callback stream, where any dispatcher finds them.
    pub(super) async fn move_overdue_callbacks(&self) {
        let now = unix_ms();
        let overdue: Vec<(String, Settled)> = {
            let mut settled = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
            let ids: Vec<String> = settled
                .iter()
                .filter(|(_, s)| {
                    s.carrier.is_some() && s.current.record.callback_due.is_none_or(|d| d <= now)
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| settled.remove(&id).map(|s| (id, s)))
                .collect()
        };
        for (call_id, Settled { current, carrier }) in overdue {
            let Some(carrier) = carrier else { continue };
            match self
                .move_callback(&call_id, Some(current), &carrier, now, |_| {})
                .await
            {
                Ok(true) => {}
                // Delivered or moved meanwhile: the request message is done with.
                Ok(false) => release_carrier(&call_id, &carrier).await,
                Err(e) => tracing::warn!(
                    call_id,
                    error = %crate::http::proxy::error_chain(&e),
                    "cannot queue an overdue callback; it is queued when its request message comes back"
                ),
            }
        }
    }

    /// [`Queue::callback_result`]: records a callback's delivery, or schedules its next try.
    pub(super) async fn record_callback_result(
        &self,
        call_id: &str,
        delivered: bool,
        retry_in: Option<Duration>,
        error: Option<&str>,
    ) -> Result<(), QueueError> {
        let claimed = self
            .claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(call_id);
        let (mut settled, carrier) = match self
            .settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(call_id)
        {
            Some(Settled { current, carrier }) => (Some(current), carrier),
            None => (None, None),
        };
        let now = unix_ms();
        let (state, retry_in) = CallbackState::after_attempt(delivered, retry_in);
        let due = retry_in.map(|d| now.saturating_add(ms(d)));
        let note = |record: &mut Record| {
            record.callback = state;
            record.callback_attempts += 1;
            record.callback_error = error.map(str::to_string);
        };
        if let (Some(carrier), Some(due)) = (&carrier, due) {
            // To be tried again later, by any dispatcher: the callback moves to the callback
            // stream, if it is still carried by the request message (else the record is read
            // again below).
            if self
                .move_callback(call_id, settled.take(), carrier, due, &note)
                .await?
            {
                return Ok(());
            }
        }
        // The callback this process delivered: a record whose pending callback is another
        // one (the call was redriven and finished again meanwhile) is not touched.
        let delivered_seq = claimed
            .as_ref()
            .and_then(|m| m.info().ok().map(|i| i.stream_sequence))
            .or_else(|| settled.as_ref().and_then(|v| v.record.callback_seq));
        // Through an election, as a call's outcome: else the callback would be sent again.
        // The count of attempts this write stores, to know it again should its answer be lost.
        let wrote = Mutex::new(None);
        let mut first = settled;
        let within_lease = self.config.lease;
        let changed = within(
            tokio::time::Instant::now() + within_lease,
            within_lease,
            "record a callback's delivery",
            || {
                self.modify_from(call_id, first.take(), |record| {
                    let this = record
                        .callback_seq
                        .map(|seq| (seq, record.callback_object.clone()));
                    let mut wrote = wrote.lock().unwrap_or_else(PoisonError::into_inner);
                    if wrote.is_some_and(|n| n == record.callback_attempts)
                        && record.callback == state
                        && record.callback_due == due
                    {
                        return Step::Keep(this);
                    }
                    if record.callback != CallbackState::Pending
                        || delivered_seq.is_some_and(|s| record.callback_seq != Some(s))
                    {
                        return Step::Keep(None);
                    }
                    note(record);
                    record.callback_due = due;
                    if state != CallbackState::Pending {
                        // Only a carried callback needs them; it is done with.
                        record.result_headers = Vec::new();
                        record.duration = None;
                    }
                    *wrote = Some(record.callback_attempts);
                    Step::Write(this)
                })
            },
        )
        .await?;
        if let Some(carrier) = &carrier {
            // Delivered or given up (or no longer pending): the request message is done with.
            release_carrier(call_id, carrier).await;
        }
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
    }
}
