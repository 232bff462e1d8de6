//! A call's status record in the key-value bucket, its keys, and the compare-and-set that every
//! change goes through.

use super::*;

/// The key of a call's status record.
pub(super) fn record_key(call_id: &str) -> String {
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
pub(super) fn call_id_from_key(key: &str) -> Option<String> {
    if let Some(id) = key.strip_prefix("c.") {
        return Some(id.to_string());
    }
    let bytes = hex::decode(key.strip_prefix("x.")?).ok()?;
    String::from_utf8(bytes).ok()
}

/// The key of an idempotency key's entry.
pub(super) fn idem_key(key: &str) -> String {
    format!("i.{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A call's status record, as stored in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) call_id: String,
    pub(super) function: String,
    pub(super) state: CallState,
    pub(super) attempts: u32,
    #[serde(default)]
    pub(super) dead: bool,
    pub(super) enqueued_at: u64,
    pub(super) retry_since: u64,
    #[serde(default)]
    pub(super) started_at: Option<u64>,
    #[serde(default)]
    pub(super) finished_at: Option<u64>,
    #[serde(default)]
    pub(super) next_attempt_at: Option<u64>,
    /// The worker holding the lease, while running.
    #[serde(default)]
    pub(super) owner: Option<String>,
    /// The request message's stream sequence, once a worker has seen it.
    #[serde(default)]
    pub(super) seq: Option<u64>,
    #[serde(default)]
    pub(super) status_code: Option<u16>,
    #[serde(default)]
    pub(super) last_error: Option<String>,
    /// Result head (up to the cap), base64.
    #[serde(default)]
    pub(super) result: Option<String>,
    #[serde(default)]
    pub(super) result_truncated: bool,
    /// The final outcome's response headers, kept while its callback is carried by the request
    /// message (see [`Record::carries_callback`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) result_headers: Vec<(String, String)>,
    /// Seconds the final attempt took, kept with the headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) duration: Option<f64>,
    #[serde(default)]
    pub(super) callback_url: Option<String>,
    /// Where its callback delivery is.
    pub(super) callback: CallbackState,
    #[serde(default)]
    pub(super) callback_attempts: u32,
    /// When the pending callback is due (Unix ms).
    #[serde(default)]
    pub(super) callback_due: Option<u64>,
    /// Why the last callback delivery failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) callback_error: Option<String>,
    /// The pending callback's message sequence in the callback stream.
    #[serde(default)]
    pub(super) callback_seq: Option<u64>,
    /// The object holding the pending callback's body, when it did not fit in the message.
    #[serde(default)]
    pub(super) callback_object: Option<String>,
    /// Times redriven from the dead-letter stream.
    #[serde(default)]
    pub(super) redrives: u32,
    /// `Nats-Msg-Id` of the request message: the call id and a tag of this record (a record
    /// stored again after an undone enqueue has another).
    #[serde(default)]
    pub(super) msg_id: Option<String>,
}

impl Record {
    pub(super) fn queued(request: &QueueRequest) -> Self {
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
            result_headers: Vec::new(),
            duration: None,
            callback_url: request.callback_url.clone(),
            callback: CallbackState::None,
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
    pub(super) fn msg_id(&self) -> &str {
        self.msg_id.as_deref().unwrap_or(&self.call_id)
    }

    /// Whether the pending callback is carried by the call's request message (message `seq`,
    /// held unacked by the worker delivering it): the record holds the whole outcome, and no
    /// callback message exists yet.
    pub(super) fn carries_callback(&self) -> bool {
        self.callback == CallbackState::Pending
            && self.callback_seq.is_none()
            && matches!(self.state, CallState::Succeeded | CallState::Failed)
    }

    /// The final outcome as the record keeps it (the whole of it when the callback is carried
    /// by the request message).
    pub(super) fn outcome(&self) -> Outcome {
        Outcome {
            status: self.status_code.unwrap_or(0),
            headers: self.result_headers.clone(),
            body: self
                .result
                .as_ref()
                .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
                .unwrap_or_default(),
            duration: self.duration.unwrap_or(0.0),
            error: self.last_error.clone(),
        }
    }

    /// Whether `owner` holds the lease.
    pub(super) fn held_by(&self, owner: &str) -> bool {
        self.state == CallState::Running && self.owner.as_deref() == Some(owner)
    }

    pub(super) fn status(&self) -> CallStatus {
        let bytes = self
            .result
            .as_ref()
            .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok());
        // The stored head is already cut at the cap.
        let (text, base64, _) = match bytes {
            None => (None, None, false),
            Some(bytes) => shown_result(&bytes, bytes.len()),
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
            callback: self.callback,
            callback_attempts: self.callback_attempts,
            callback_error: self.callback_error.clone(),
        }
    }
}

/// A pending callback, as carried in the callback stream.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CallbackMessage {
    pub(super) call_id: String,
    pub(super) function: String,
    pub(super) url: String,
    /// The attempt that produced the outcome (a stale message from a lost lease has a lower
    /// one than the record and is dropped).
    pub(super) attempts: u32,
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    /// The body, base64, when it fits in the message.
    #[serde(default)]
    pub(super) body: Option<String>,
    /// The object holding the body otherwise.
    #[serde(default)]
    pub(super) body_object: Option<String>,
    pub(super) duration: f64,
    #[serde(default)]
    pub(super) error: Option<String>,
}

/// A record and the revision it was read at.
pub(super) struct Versioned {
    pub(super) record: Record,
    pub(super) revision: u64,
}

/// What the bucket holds under a key: a value (raw with its revision, or a record), or none.
pub(super) enum Stored<T> {
    /// The latest value.
    Found(T),
    /// A delete or purge marker. For a record: the enqueue that stored it failed and undid it
    /// (its client heard "unavailable"), or the dead letter was purged.
    Removed,
    /// Nothing: never stored, or expired with the retention.
    Missing,
}

/// What a record change decided.
pub(super) enum Step<T> {
    /// Store the edited record, then report `T`.
    Write(T),
    /// Leave the record as it is and report `T`.
    Keep(T),
}

/// A finished call whose first callback delivery is this process's.
pub(super) struct Settled {
    /// The record as this process wrote it (saves a read when the delivery is recorded).
    pub(super) current: Versioned,
    /// The request message, held unacked while it carries the callback
    /// ([`Record::carries_callback`]).
    pub(super) carrier: Option<Message>,
}

/// A leased request message.
pub(super) struct Held {
    pub(super) owner: String,
    pub(super) message: Message,
    /// The lease length the owner asked for.
    pub(super) lease: Duration,
    /// The record as this process last wrote it (saves a read when the call is settled; a
    /// stale one only fails its compare-and-set).
    pub(super) current: Versioned,
}

impl JetStreamQueue {
    pub(super) async fn read(&self, call_id: &str) -> Result<Option<Versioned>, QueueError> {
        match self.lookup(call_id).await? {
            Stored::Found(v) => Ok(Some(*v)),
            Stored::Removed | Stored::Missing => Ok(None),
        }
    }

    /// A call's record, or whether it was removed. Read from the bucket stream's leader
    /// whatever the bucket's `allow_direct`: in a cluster a lagging replica answering a direct
    /// get could show a record from before its last change, and a worker deciding from it
    /// could drop a call's only message.
    pub(super) async fn lookup(&self, call_id: &str) -> Result<Stored<Box<Versioned>>, QueueError> {
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
    pub(super) async fn entry(&self, key: &str) -> Result<Stored<(Bytes, u64)>, QueueError> {
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
    pub(super) async fn write(
        &self,
        record: &Record,
        revision: u64,
    ) -> Result<Option<u64>, QueueError> {
        let value =
            Bytes::from(
                serde_json::to_vec(record).map_err(|source| QueueError::Corrupt {
                    call_id: record.call_id.clone(),
                    source,
                })?,
            );
        let key = record_key(&record.call_id);
        if revision == 0 {
            return self.create_entry(&key, value).await;
        }
        match self.kv.update(key, value, revision).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Creates a bucket entry; its revision, or `None` when the key holds one already.
    pub(super) async fn create_entry(
        &self,
        key: &str,
        value: Bytes,
    ) -> Result<Option<u64>, QueueError> {
        // A write expecting no entry first. (The client's create writes the same way but reads
        // the key back after any failure, which, while the bucket has no leader, waits out the
        // whole request timeout.) Only when an entry is there (a live one, or a delete marker
        // the create may write over) is the create asked.
        match self.kv.update(key, value.clone(), 0).await {
            Ok(r) => return Ok(Some(r)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(unavailable(e)),
        }
        match self.kv.create(key, value).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Reads a call's record, lets `change` edit it and stores it, again from a fresh read
    /// whenever another writer came in between. `None`: there is no record.
    pub(super) async fn modify<T>(
        &self,
        call_id: &str,
        change: impl FnMut(&mut Record) -> Step<T>,
    ) -> Result<Option<(T, Versioned)>, QueueError> {
        self.modify_from(call_id, None, change).await
    }

    /// [`Self::modify`], starting from a record just read.
    pub(super) async fn modify_from<T>(
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
}
