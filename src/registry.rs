//! The registry: the system of record, one embedded SQLite file.
//!
//! Persons, their templates (bytes, model id, dimension), when and where (gate, site) each was
//! enrolled, and an audit trail of erasures. The database runs in WAL mode with
//! `synchronous=FULL`, so a committed transaction survives a crash or power cut.
//!
//! All writes go through one writer thread. It takes every change queued while the previous
//! transaction was committing and commits them together (group commit: one fsync for many
//! gates), then calls the commit hook with the changes *in commit order*, and only then
//! answers the callers. The appliance uses the hook to update the gallery, so "enrolled"
//! means durable and visible to the next request, and the gallery never runs ahead of, or
//! out of order with, the registry.
//!
//! While open, the registry holds an exclusive lock on `<path>.lock`, so that a second
//! appliance or an offline import cannot write the same file underneath it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use crate::metrics;

/// What can fail in the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// SQLite failed.
    #[error("registry database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The lock file could not be opened.
    #[error("registry lock {path}: {source}")]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the registry.
    #[error("registry {path} is held by another process (an appliance is running on it?)")]
    Held {
        /// The database file.
        path: PathBuf,
    },
    /// A stored template is not a whole number of f32 values of its dimension.
    #[error("template {template_row} is stored with {bytes} bytes for dimension {dimension}")]
    CorruptTemplate {
        /// Row id of the template.
        template_row: i64,
        /// Bytes stored.
        bytes: usize,
        /// Dimension stored.
        dimension: i64,
    },
    /// A transaction failed and was rolled back: none of its changes were made.
    #[error("registry {path}: commit failed and was rolled back: {detail}")]
    CommitFailed {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The writer thread has stopped.
    #[error("registry writer stopped")]
    Stopped,
}

/// Where a change came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The gate id from the gate's certificate (or the tool's name for offline changes).
    pub gate_id: String,
    /// The gate's site.
    pub site: String,
}

/// One template to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTemplate {
    /// Biometric modality, as the protocol numbers it.
    pub modality: i32,
    /// The model that made it.
    pub model_id: String,
    /// The vector.
    pub values: Vec<f32>,
}

/// A change to the registry.
#[derive(Clone, Debug)]
pub enum Change {
    /// Adds templates to a person, creating the person first if needed.
    Enrol {
        /// The person (state and personal number).
        person_id: String,
        /// The templates to add.
        templates: Vec<NewTemplate>,
        /// Who asked.
        origin: Origin,
    },
    /// Removes a person and every template.
    Erase {
        /// The person.
        person_id: String,
        /// Who asked.
        origin: Origin,
    },
}

/// What a committed change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// Templates were added.
    Enrolled {
        /// The person was new.
        created: bool,
        /// Templates the person holds now.
        templates: u32,
    },
    /// The person was removed with this many templates (0: there was no such person).
    Erased {
        /// Templates removed.
        templates: u32,
    },
}

/// Called by the writer thread after each commit with the changes it made durable, in order.
pub type CommitHook = Box<dyn FnMut(&[(Change, Receipt)]) + Send>;

struct Pending {
    change: Change,
    reply: oneshot::Sender<Result<Receipt, RegistryError>>,
}

/// The handle to an open registry.
pub struct Registry {
    path: PathBuf,
    writer: SyncSender<Pending>,
    _lock: File,
}

/// Largest number of changes folded into one transaction.
const MAX_GROUP: usize = 512;

impl Registry {
    /// Opens (creating if needed) the registry at `path` and takes its lock; `hook`, when
    /// given, is called after every commit. Also returns a read connection for loading.
    pub fn open(
        path: &Path,
        hook: Option<CommitHook>,
    ) -> Result<(Registry, Connection), RegistryError> {
        let lock = lock(path)?;
        let connection = connect(path)?;
        let reader = connect(path)?;
        let (writer, queue) = mpsc::sync_channel(4 * MAX_GROUP);
        let registry = Registry {
            path: path.to_owned(),
            writer,
            _lock: lock,
        };
        let db_path = path.to_owned();
        thread::Builder::new()
            .name("gatematch-registry".into())
            .spawn(move || write_loop(db_path, connection, queue, hook))
            .expect("spawning the registry writer at start-up");
        Ok((registry, reader))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `change` durable; the answer comes after the commit (and the hook).
    pub async fn apply(&self, change: Change) -> Result<Receipt, RegistryError> {
        let (reply, answer) = oneshot::channel();
        match self.writer.try_send(Pending { change, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(pending)) => {
                // The writer is behind by a whole queue; wait for room on a blocking thread
                // rather than stall the runtime's.
                let writer = self.writer.clone();
                tokio::task::spawn_blocking(move || writer.send(pending))
                    .await
                    .map_err(|_| RegistryError::Stopped)?
                    .map_err(|_| RegistryError::Stopped)?;
            }
            Err(TrySendError::Disconnected(_)) => return Err(RegistryError::Stopped),
        }
        answer.await.map_err(|_| RegistryError::Stopped)?
    }

    /// Makes `change` durable from a plain thread.
    pub fn apply_blocking(&self, change: Change) -> Result<Receipt, RegistryError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Pending { change, reply })
            .map_err(|_| RegistryError::Stopped)?;
        answer.blocking_recv().map_err(|_| RegistryError::Stopped)?
    }
}

/// Takes the exclusive lock of the registry at `path`.
pub fn lock(path: &Path) -> Result<File, RegistryError> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| RegistryError::LockFile {
            path: lock_path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RegistryError::Held {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(RegistryError::LockFile {
            path: lock_path,
            source,
        }),
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Opens a connection with the durability settings and the schema in place.
pub fn connect(path: &Path) -> Result<Connection, RegistryError> {
    let db = |source| RegistryError::Database {
        path: path.to_owned(),
        source,
    };
    let connection = Connection::open(path).map_err(db)?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 10000;
             CREATE TABLE IF NOT EXISTS persons (
                 id INTEGER PRIMARY KEY,
                 person_id TEXT NOT NULL UNIQUE,
                 enrolled_at_ms INTEGER NOT NULL,
                 gate_id TEXT NOT NULL,
                 site TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS templates (
                 id INTEGER PRIMARY KEY,
                 person INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
                 modality INTEGER NOT NULL,
                 model_id TEXT NOT NULL,
                 dimension INTEGER NOT NULL,
                 data BLOB NOT NULL,
                 enrolled_at_ms INTEGER NOT NULL,
                 gate_id TEXT NOT NULL,
                 site TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS templates_by_person ON templates(person);
             CREATE TABLE IF NOT EXISTS audit (
                 id INTEGER PRIMARY KEY,
                 at_ms INTEGER NOT NULL,
                 operation TEXT NOT NULL,
                 person_id TEXT NOT NULL,
                 gate_id TEXT NOT NULL,
                 site TEXT NOT NULL,
                 templates INTEGER NOT NULL
             );",
        )
        .map_err(db)?;
    Ok(connection)
}

fn write_loop(
    path: PathBuf,
    mut connection: Connection,
    queue: Receiver<Pending>,
    mut hook: Option<CommitHook>,
) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        match commit_group(&mut connection, &group) {
            Ok(receipts) => {
                metrics::commit(group.len(), started.elapsed());
                let done: Vec<(Change, Receipt)> = group
                    .iter()
                    .map(|p| p.change.clone())
                    .zip(receipts.iter().cloned())
                    .collect();
                if let Some(hook) = hook.as_mut() {
                    hook(&done);
                }
                for (pending, receipt) in group.into_iter().zip(receipts) {
                    let _ = pending.reply.send(Ok(receipt));
                }
            }
            Err(source) => {
                tracing::error!(path = %path.display(), error = %source, "registry commit failed");
                for pending in group {
                    let error = RegistryError::CommitFailed {
                        path: path.clone(),
                        detail: source.to_string(),
                    };
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
    }
}

fn commit_group(connection: &mut Connection, group: &[Pending]) -> rusqlite::Result<Vec<Receipt>> {
    let tx = connection.transaction()?;
    let now = now_ms();
    let receipts = group
        .iter()
        .map(|p| apply_change(&tx, &p.change, now))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(receipts)
}

fn apply_change(tx: &Transaction<'_>, change: &Change, now: i64) -> rusqlite::Result<Receipt> {
    match change {
        Change::Enrol {
            person_id,
            templates,
            origin,
        } => {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM persons WHERE person_id = ?1",
                    [person_id],
                    |r| r.get(0),
                )
                .optional()?;
            let (person, created) = match existing {
                Some(id) => (id, false),
                None => {
                    tx.execute(
                        "INSERT INTO persons (person_id, enrolled_at_ms, gate_id, site)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![person_id, now, origin.gate_id, origin.site],
                    )?;
                    (tx.last_insert_rowid(), true)
                }
            };
            let mut insert = tx.prepare_cached(
                "INSERT INTO templates
                 (person, modality, model_id, dimension, data, enrolled_at_ms, gate_id, site)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for t in templates {
                insert.execute(params![
                    person,
                    t.modality,
                    t.model_id,
                    t.values.len() as i64,
                    encode(&t.values),
                    now,
                    origin.gate_id,
                    origin.site
                ])?;
            }
            let count: u32 = tx.query_row(
                "SELECT COUNT(*) FROM templates WHERE person = ?1",
                [person],
                |r| r.get(0),
            )?;
            Ok(Receipt::Enrolled {
                created,
                templates: count,
            })
        }
        Change::Erase { person_id, origin } => {
            let removed: u32 = tx.query_row(
                "SELECT COUNT(*) FROM templates t JOIN persons p ON t.person = p.id
                 WHERE p.person_id = ?1",
                [person_id],
                |r| r.get(0),
            )?;
            let persons = tx.execute("DELETE FROM persons WHERE person_id = ?1", [person_id])?;
            if persons > 0 {
                tx.execute(
                    "INSERT INTO audit (at_ms, operation, person_id, gate_id, site, templates)
                     VALUES (?1, 'erase', ?2, ?3, ?4, ?5)",
                    params![now, person_id, origin.gate_id, origin.site, removed],
                )?;
            }
            Ok(Receipt::Erased {
                templates: if persons > 0 { removed } else { 0 },
            })
        }
    }
}

/// One stored template, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTemplate {
    /// The owner.
    pub person_id: String,
    /// Biometric modality.
    pub modality: i32,
    /// The model that made it.
    pub model_id: String,
    /// The vector.
    pub values: Vec<f32>,
}

/// Calls `each` with every stored template, oldest first.
pub fn for_each_template(
    connection: &Connection,
    model_id: Option<&str>,
    mut each: impl FnMut(StoredTemplate),
) -> Result<usize, RegistryError> {
    let path = PathBuf::from(connection.path().unwrap_or_default());
    let db = |source| RegistryError::Database {
        path: path.clone(),
        source,
    };
    let mut statement = connection
        .prepare(
            "SELECT t.id, p.person_id, t.modality, t.model_id, t.dimension, t.data
             FROM templates t JOIN persons p ON t.person = p.id
             WHERE ?1 IS NULL OR t.model_id = ?1
             ORDER BY t.id",
        )
        .map_err(db)?;
    let mut rows = statement.query([model_id]).map_err(db)?;
    let mut count = 0;
    while let Some(row) = rows.next().map_err(db)? {
        let template_row: i64 = row.get(0).map_err(db)?;
        let dimension: i64 = row.get(4).map_err(db)?;
        let data: Vec<u8> = row.get(5).map_err(db)?;
        let values = decode(&data, dimension).ok_or(RegistryError::CorruptTemplate {
            template_row,
            bytes: data.len(),
            dimension,
        })?;
        each(StoredTemplate {
            person_id: row.get(1).map_err(db)?,
            modality: row.get(2).map_err(db)?,
            model_id: row.get(3).map_err(db)?,
            values,
        });
        count += 1;
    }
    Ok(count)
}

/// Persons in the registry.
pub fn person_count(connection: &Connection) -> Result<u64, RegistryError> {
    let path = PathBuf::from(connection.path().unwrap_or_default());
    connection
        .query_row("SELECT COUNT(*) FROM persons", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(|source| RegistryError::Database { path, source })
}

fn encode(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn decode(data: &[u8], dimension: i64) -> Option<Vec<f32>> {
    if dimension < 0 || data.len() != dimension as usize * 4 {
        return None;
    }
    Some(
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Adds templates of one model to the registry at `path` in one transaction, offline: the
/// registry's lock is taken first, so this refuses to run while an appliance holds the file.
/// Returns how many templates were stored.
pub fn import<'a>(
    path: &Path,
    model_id: &str,
    modality: i32,
    rows: impl Iterator<Item = (&'a str, &'a [f32])>,
    origin: &Origin,
) -> Result<usize, RegistryError> {
    let _lock = lock(path)?;
    let mut connection = connect(path)?;
    let db = |source| RegistryError::Database {
        path: path.to_owned(),
        source,
    };
    let tx = connection.transaction().map_err(db)?;
    let now = now_ms();
    let mut count = 0;
    {
        let mut person = tx
            .prepare(
                "INSERT INTO persons (person_id, enrolled_at_ms, gate_id, site)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(person_id) DO UPDATE SET person_id = excluded.person_id
                 RETURNING id",
            )
            .map_err(db)?;
        let mut template = tx
            .prepare(
                "INSERT INTO templates
                 (person, modality, model_id, dimension, data, enrolled_at_ms, gate_id, site)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(db)?;
        for (person_id, values) in rows {
            let id: i64 = person
                .query_row(params![person_id, now, origin.gate_id, origin.site], |r| {
                    r.get(0)
                })
                .map_err(db)?;
            template
                .execute(params![
                    id,
                    modality,
                    model_id,
                    values.len() as i64,
                    encode(values),
                    now,
                    origin.gate_id,
                    origin.site
                ])
                .map_err(db)?;
            count += 1;
        }
    }
    tx.commit().map_err(db)?;
    Ok(count)
}
