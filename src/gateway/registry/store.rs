//! The gateway's durable state: one SQLite file in the data directory (WAL mode,
//! `synchronous=FULL`), holding the deployed functions so a restarted gateway brings them back.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};

use crate::gateway::types::{FunctionDeployment, FunctionNamespace};

/// The database file inside the data directory.
pub const DB_FILE: &str = "fgateway.db";

/// The store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("state database {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored function no longer parses.
    #[error("stored function {name} is unreadable")]
    Corrupt {
        /// The function.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A deployed function as stored.
#[derive(Debug, Clone)]
pub struct StoredFunction {
    /// What was deployed.
    pub spec: FunctionDeployment,
    /// Replicas asked for.
    pub replicas: u64,
    /// When it was deployed (RFC 3339).
    pub created_at: String,
}

/// The state database.
#[derive(Debug)]
pub struct Store {
    /// The file, for messages.
    path: PathBuf,
    /// One connection; writes are rare (system API calls) and short.
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS functions (
                name TEXT PRIMARY KEY,
                spec TEXT NOT NULL,
                replicas INTEGER NOT NULL,
                created_at TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS namespaces (
                name TEXT PRIMARY KEY,
                spec TEXT NOT NULL
            );",
        )
        .map_err(sql)?;
        // Functions were once stored by name alone: key them by name and namespace.
        let rekey: Vec<(String, String)> = {
            let mut stmt = conn
                .prepare("SELECT name, spec FROM functions")
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (name, spec) = row.map_err(sql)?;
                if let Ok(spec) = serde_json::from_str::<FunctionDeployment>(&spec)
                    && spec.key() != name
                {
                    out.push((name, spec.key()));
                }
            }
            out
        };
        for (old, key) in rekey {
            // When both rows exist, the keyed one is the newer: the old one goes.
            conn.execute(
                "UPDATE OR IGNORE functions SET name = ?2 WHERE name = ?1",
                params![old, key],
            )
            .map_err(sql)?;
            conn.execute("DELETE FROM functions WHERE name = ?1", params![old])
                .map_err(sql)?;
        }
        Ok(Store {
            path,
            conn: Mutex::new(conn),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Saves (inserts or replaces) a function.
    pub fn save(&self, f: &StoredFunction) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&f.spec).map_err(|source| StoreError::Corrupt {
            name: f.spec.service.clone(),
            source,
        })?;
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute(
            "INSERT INTO functions (name, spec, replicas, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET spec = ?2, replicas = ?3, created_at = ?4",
            params![
                f.spec.key(),
                spec,
                i64::try_from(f.replicas).unwrap_or(i64::MAX),
                f.created_at
            ],
        )
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Removes a function (by key, `NAME.NAMESPACE`); whether it existed.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let n = conn
            .execute("DELETE FROM functions WHERE name = ?1", params![name])
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Every stored function.
    pub fn functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stmt = conn
            .prepare("SELECT name, spec, replicas, created_at FROM functions ORDER BY name")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, spec, replicas, created_at) = row.map_err(|e| self.sql(e))?;
            let spec = serde_json::from_str(&spec)
                .map_err(|source| StoreError::Corrupt { name, source })?;
            out.push(StoredFunction {
                spec,
                replicas: u64::try_from(replicas).unwrap_or(0),
                created_at,
            });
        }
        Ok(out)
    }

    /// Every namespace created through the system API.
    pub fn namespaces(&self) -> Result<Vec<FunctionNamespace>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stmt = conn
            .prepare("SELECT name, spec FROM namespaces ORDER BY name")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, spec) = row.map_err(|e| self.sql(e))?;
            out.push(
                serde_json::from_str(&spec)
                    .map_err(|source| StoreError::Corrupt { name, source })?,
            );
        }
        Ok(out)
    }

    /// Saves (inserts or replaces) a namespace.
    pub fn save_namespace(&self, ns: &FunctionNamespace) -> Result<(), StoreError> {
        let spec = serde_json::to_string(ns).map_err(|source| StoreError::Corrupt {
            name: ns.name.clone(),
            source,
        })?;
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute(
            "INSERT INTO namespaces (name, spec) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET spec = ?2",
            params![ns.name, spec],
        )
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Removes a namespace; whether it existed.
    pub fn remove_namespace(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let n = conn
            .execute("DELETE FROM namespaces WHERE name = ?1", params![name])
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// One stored function.
    pub fn function(&self, name: &str) -> Result<Option<StoredFunction>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let row = conn
            .query_row(
                "SELECT spec, replicas, created_at FROM functions WHERE name = ?1",
                params![name],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        match row {
            None => Ok(None),
            Some((spec, replicas, created_at)) => Ok(Some(StoredFunction {
                spec: serde_json::from_str(&spec).map_err(|source| StoreError::Corrupt {
                    name: name.to_string(),
                    source,
                })?,
                replicas: u64::try_from(replicas).unwrap_or(0),
                created_at,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let spec = FunctionDeployment {
            service: "echo".into(),
            env_process: Some("cat".into()),
            ..Default::default()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .save(&StoredFunction {
                    spec: spec.clone(),
                    replicas: 2,
                    created_at: "t".into(),
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let all = store.functions().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].spec, spec);
        assert_eq!(all[0].replicas, 2);
        assert!(store.remove("echo.openfaas-fn").unwrap());
        assert!(!store.remove("echo.openfaas-fn").unwrap());
        assert!(store.function("echo.openfaas-fn").unwrap().is_none());
    }

    #[test]
    fn functions_stored_by_name_alone_are_keyed_by_namespace_too() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let conn = store.conn.lock().unwrap();
            conn.execute(
                "INSERT INTO functions (name, spec, replicas, created_at) VALUES (?1, ?2, 1, 't')",
                params!["echo", r#"{"service":"echo","namespace":"team"}"#],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.function("echo.team").unwrap().is_some());
        assert!(store.function("echo").unwrap().is_none());
    }
}
