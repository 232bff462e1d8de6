//! The writer thread: one SQLite connection that runs every change, batching the jobs waiting
//! into one transaction (group commit), durable batches with `synchronous=FULL`; the schema and
//! its migrations; the prepared-statement cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::{EmbeddedConfig, EmbeddedQueue, unavailable};
use crate::queue::{BoxFuture, QueueError};

/// Most jobs in one transaction.
const MAX_BATCH: usize = 1024;

/// Runs inside the batch transaction (or is told there is none: the store failed) and returns
/// what to do once the commit's result is known.
type Work = Box<dyn FnOnce(Option<&Transaction<'_>>) -> Complete + Send>;

/// One unit of work for the writer.
pub(super) struct Job {
    /// Whether its commit must be fsync'd before it is answered.
    durable: bool,
    /// The work.
    work: Work,
}
/// Called with the commit's result.
type Complete = Box<dyn FnOnce(Result<(), Arc<rusqlite::Error>>) + Send>;

/// The writer thread is gone.
#[derive(Debug, thiserror::Error)]
#[error("the queue writer has stopped")]
struct WriterGone;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    request TEXT NOT NULL,
    idem_key TEXT UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    visible_at INTEGER NOT NULL,
    owner TEXT,
    lease_until INTEGER,
    enqueued_at INTEGER NOT NULL,
    retry_since INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER,
    finished_at INTEGER,
    status_code INTEGER,
    last_error TEXT,
    result BLOB,
    result_headers TEXT,
    duration REAL,
    cb_url TEXT,
    cb_state TEXT NOT NULL DEFAULT 'none',
    cb_attempts INTEGER NOT NULL DEFAULT 0,
    cb_next_at INTEGER,
    cb_error TEXT
);
CREATE INDEX IF NOT EXISTS calls_waiting ON calls(state, visible_at);
CREATE INDEX IF NOT EXISTS calls_leases ON calls(state, lease_until);
-- Partial indexes where a query looks at a few rows only (pending callbacks, dead letters,
-- finished calls): a call is in them only while it is one of those.
DROP INDEX IF EXISTS calls_callbacks;
DROP INDEX IF EXISTS calls_dead;
CREATE INDEX IF NOT EXISTS calls_pending_callbacks ON calls(cb_next_at) WHERE cb_state = 'pending';
CREATE INDEX IF NOT EXISTS calls_finished ON calls(finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_by_time ON calls(enqueued_at, call_id);
CREATE INDEX IF NOT EXISTS calls_by_function ON calls(function, enqueued_at, call_id);
CREATE INDEX IF NOT EXISTS calls_by_state ON calls(state, enqueued_at, call_id);
CREATE INDEX IF NOT EXISTS calls_dead_letters ON calls(enqueued_at, call_id) WHERE dead = 1;
";

impl EmbeddedQueue {
    /// Opens the queue in `data_dir`'s database file (shared with the gateway's state).
    pub fn open(db: &Path, config: EmbeddedConfig) -> Result<Self, QueueError> {
        let conn = open_connection(db)?;
        let (tx, rx) = std_mpsc::channel::<Job>();
        let path: PathBuf = db.to_path_buf();
        std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer(conn, rx, &path))
            .map_err(unavailable)?;
        Ok(EmbeddedQueue { jobs: tx, config })
    }

    /// Runs `f` in the writer's next transaction; resolves after the commit, which is fsync'd.
    pub(super) fn submit_durable<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, QueueError>> {
        self.submit_as(true, f)
    }

    /// Runs `f` in the writer's next transaction; resolves after the commit, which reached the
    /// operating system but may not be fsync'd yet (worker bookkeeping).
    pub(super) fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, QueueError>> {
        self.submit_as(false, f)
    }

    fn submit_as<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, QueueError>> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |txn| {
            let result = match txn {
                Some(txn) => f(txn),
                None => Err(unavailable(WriterGone)),
            };
            Box::new(move |commit| {
                let _ = tx.send(match commit {
                    Ok(()) => result,
                    Err(e) => Err(QueueError::Unavailable(Box::new(ArcError(e)))),
                });
            })
        });
        let sent = self.jobs.send(Job { durable, work });
        Box::pin(async move {
            if sent.is_err() {
                return Err(unavailable(WriterGone));
            }
            rx.await.map_err(|_| unavailable(WriterGone))?
        })
    }
}

/// A shared SQLite error.
#[derive(Debug)]
struct ArcError(Arc<rusqlite::Error>);

impl std::fmt::Display for ArcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Opens the database, in WAL mode, with the schema.
pub(super) fn open_connection(db: &Path) -> Result<Connection, QueueError> {
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
    }
    let conn = Connection::open(db).map_err(unavailable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(unavailable)?;
    conn.execute_batch(SCHEMA).map_err(unavailable)?;
    // Databases from before callback errors were recorded.
    let has_cb_error: bool = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('calls') WHERE name = 'cb_error'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(unavailable)?
        > 0;
    if !has_cb_error {
        conn.execute_batch("ALTER TABLE calls ADD COLUMN cb_error TEXT")
            .map_err(unavailable)?;
    }
    Ok(conn)
}

/// The writer thread: batches jobs into transactions until every sender is gone.
fn writer(mut conn: Connection, jobs: std_mpsc::Receiver<Job>, path: &Path) {
    let mut full = true;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let durable = batch.iter().any(|j| j.durable);
        if durable != full {
            let mode = if durable { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => full = durable,
                Err(e) => tracing::warn!(error = %e, mode, "cannot switch synchronous mode"),
            }
        }
        if durable && !full {
            // The switch failed: do not answer a durable job from a commit that is not.
            let e = Arc::new(rusqlite::Error::InvalidQuery);
            for job in batch {
                (job.work)(None)(Err(Arc::clone(&e)));
            }
            continue;
        }
        let txn = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(txn) => txn,
            Err(e) => {
                tracing::error!(db = %path.display(), error = %e, "queue store unavailable");
                let e = Arc::new(e);
                for job in batch {
                    (job.work)(None)(Err(Arc::clone(&e)));
                }
                continue;
            }
        };
        // A failing statement (disk full, I/O error) can make SQLite roll the whole
        // transaction back; jobs after that must not run in autocommit mode and persist while
        // the batch reports failure.
        let mut completes: Vec<Complete> = Vec::with_capacity(batch.len());
        let mut rolled_back = false;
        for job in batch {
            if rolled_back {
                completes.push((job.work)(None));
                continue;
            }
            completes.push((job.work)(Some(&txn)));
            rolled_back = txn.is_autocommit();
        }
        let commit = txn.commit().map_err(|e| {
            tracing::error!(db = %path.display(), error = %e, "queue commit failed");
            Arc::new(e)
        });
        for complete in completes {
            complete(commit.clone());
        }
    }
}

/// Statements through SQLite's prepared-statement cache: the writer runs the same few
/// statements thousands of times a second.
pub(super) trait Cached {
    /// `execute` with a cached statement.
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// `query_row` with a cached statement.
    fn query_row_cached<T, P: rusqlite::Params, F>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>
    where
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Transaction<'_> {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P: rusqlite::Params, F>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>
    where
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}
