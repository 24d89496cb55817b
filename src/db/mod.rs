//! The embedded store. This is the only module that imports `redb`.
//!
//! Every method here is synchronous and may block on `fsync`; async code calls them through
//! [`Db::run`], which moves the work to the blocking pool. A write method returns only after
//! its transaction committed durably (redb's default `Durability::Immediate`), so callers
//! acknowledge nothing that is not on disk.

mod alerts;
mod audit;
mod clusters;
mod integrity;
mod machines;
pub mod repair;
mod schema;
mod scratch;
mod servers;
#[cfg(test)]
mod testutil;
mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTableMetadata};

pub use alerts::AlertRecord;
pub use audit::AuditEntry;
pub use clusters::ClusterRecord;
pub use machines::Relations;
pub use servers::ServerRecord;
pub use users::{NewUser, UserChange};

/// Why the database could not be opened. Each renders as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database {path} is in use by another process (is another orchard running?)")]
    InUse { path: PathBuf },
    #[error(
        "database {path} is damaged ({reason}); it was left untouched: with orchard stopped, `orchard db repair --data-dir {}` keeps a copy and salvages what is readable",
        data_dir(path).display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "database {path} is not an Orchard database ({reason}); it was left untouched (move it away to start with an empty database)"
    )]
    NotADatabase { path: PathBuf, reason: String },
    #[error(
        "database {path} has schema version {found}, newer than this orchard supports ({supported}); upgrade orchard"
    )]
    TooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("cannot open database {path}: {reason}")]
    Other { path: PathBuf, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                Self::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type DbResult<T> = Result<T, DbError>;

/// A handle to the open database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Store>,
    audit_keep: u64,
    /// How long each write transaction's commit took (registered by `metrics`).
    commits: prometheus_client::metrics::histogram::Histogram,
}

/// The redb database, reopened after an I/O failure. Once a write fails (a full disk, say),
/// redb refuses every later operation, reads included (`PreviousIo`), until the database is
/// closed and opened again; the store does that on the next operation, so that the daemon
/// recovers by itself when the cause goes away. An open that fails leaves the store closed,
/// and the next operation tries again.
/// redb's page cache. Its default is 1 GiB, which the daemon's RSS would follow as the audit
/// log and the histories grow towards their pruning limits; the working set of this database
/// (users, machines' relations, the newest audit entries) is far smaller.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// How every handle on the file is opened.
fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES);
    b
}

struct Store {
    path: PathBuf,
    db: std::sync::RwLock<Option<Arc<Database>>>,
}

impl Store {
    fn new(path: &Path, db: Database) -> Self {
        Self {
            path: path.to_owned(),
            db: std::sync::RwLock::new(Some(Arc::new(db))),
        }
    }

    fn begin_read(&self) -> DbResult<redb::ReadTransaction> {
        self.with(Database::begin_read)
    }

    fn begin_write(&self) -> DbResult<redb::WriteTransaction> {
        self.with(Database::begin_write)
    }

    /// Runs `begin` on the open database; after an I/O failure, reopens it and runs it again.
    fn with<T>(
        &self,
        begin: impl Fn(&Database) -> Result<T, redb::TransactionError>,
    ) -> DbResult<T> {
        let db = self.current()?;
        match begin(&db) {
            Err(redb::TransactionError::Storage(
                redb::StorageError::PreviousIo | redb::StorageError::DatabaseClosed,
            )) => {
                self.reopen(&db)?;
                drop(db);
                let db = self.current()?;
                Ok(begin(&db)?)
            }
            other => Ok(other?),
        }
    }

    fn current(&self) -> DbResult<Arc<Database>> {
        let open = self.db.read().unwrap_or_else(|p| p.into_inner()).clone();
        match open {
            Some(db) => Ok(db),
            None => {
                let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
                self.open_into(&mut slot)
            }
        }
    }

    /// Closes `failed` (unless another caller replaced it already) and opens the file again.
    fn reopen(&self, failed: &Arc<Database>) -> DbResult<()> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|d| !Arc::ptr_eq(d, failed)) {
            return Ok(());
        }
        tracing::warn!(file = %self.path.display(), "database failed an I/O operation; reopening it");
        *slot = None;
        self.open_into(&mut slot).map(drop)
    }

    /// Opens the file into the empty `slot`. Another thread may still hold the failed handle
    /// for a moment (its files close when the last clone goes): retry briefly.
    fn open_into(&self, slot: &mut Option<Arc<Database>>) -> DbResult<Arc<Database>> {
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let mut tries = 0;
        let db = loop {
            match builder().open(&self.path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e, "cannot reopen the database");
                    return Err(DbError::Storage(e.into()));
                }
            }
        };
        tracing::info!(file = %self.path.display(), "database reopened");
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok(db)
    }
}

impl Db {
    /// Opens (or creates) the database at `path` and applies pending migrations.
    ///
    /// An existing file is opened, never recreated, and never written to when it is then
    /// refused: it is first checked through an in-memory overlay (`integrity::check`: every
    /// page checksum, every row). A damaged file is [`OpenError::Corrupt`], one that is not a
    /// redb database [`OpenError::NotADatabase`]; both are left byte for byte as they were. A
    /// file left by a crash is recovered (`integrity::recover`: a copy is kept until the
    /// recovered file reads back).
    pub fn open(path: &Path, audit_keep: u64) -> Result<Self, OpenError> {
        let db = if path.exists() {
            match integrity::check(path)? {
                integrity::Health::Clean => open_checked(path)?,
                integrity::Health::NeedsRecovery => integrity::recover(path)?,
            }
        } else {
            quietly(|| builder().create(path))
                .unwrap_or_else(|| {
                    Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                        "internal consistency check failed".into(),
                    )))
                })
                .map_err(|e| classify_open_error(path, e))?
        };
        restrict_mode(path);
        let db = Self {
            inner: Arc::new(Store::new(path, db)),
            audit_keep,
            commits: crate::metrics::commit_histogram(),
        };
        db.migrate().map_err(|e| match e {
            MigrateError::TooNew(found) => OpenError::TooNew {
                path: path.to_owned(),
                found,
                supported: schema::current_version(),
            },
            MigrateError::Db(e) => OpenError::Other {
                path: path.to_owned(),
                reason: format!("migrating it failed: {e}"),
            },
        })?;
        Ok(db)
    }

    /// Runs `f` on the blocking pool and returns its result.
    pub async fn run<T, F>(&self, f: F) -> DbResult<T>
    where
        F: FnOnce(&Db) -> DbResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// The schema version stored in the database.
    pub fn schema_version(&self) -> DbResult<u64> {
        let tx = self.inner.begin_read()?;
        let meta = match tx.open_table(schema::META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(meta
            .get(schema::SCHEMA_VERSION_KEY)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn migrate(&self) -> Result<(), MigrateError> {
        let found = self.schema_version()?;
        let target = schema::current_version();
        if found > target {
            return Err(MigrateError::TooNew(found));
        }
        for (i, step) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.inner.begin_write()?;
            step(&tx).map_err(DbError::from)?;
            {
                let mut meta = tx.open_table(schema::META).map_err(DbError::from)?;
                meta.insert(schema::SCHEMA_VERSION_KEY, i as u64 + 1)
                    .map_err(DbError::from)?;
            }
            tx.commit().map_err(DbError::from)?;
            tracing::info!(version = i + 1, "database migrated");
        }
        Ok(())
    }

    fn begin_read(&self) -> DbResult<redb::ReadTransaction> {
        self.inner.begin_read()
    }

    fn begin_write(&self) -> DbResult<redb::WriteTransaction> {
        self.inner.begin_write()
    }

    /// Commits a write transaction (durably) and records how long that took.
    fn commit(&self, tx: redb::WriteTransaction) -> DbResult<()> {
        let started = std::time::Instant::now();
        tx.commit()?;
        self.commits.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The commit-latency histogram, for the metrics registry.
    pub fn commit_latency(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commits.clone()
    }
}

enum MigrateError {
    TooNew(u64),
    Db(DbError),
}

impl From<DbError> for MigrateError {
    fn from(e: DbError) -> Self {
        Self::Db(e)
    }
}

/// Opens a file [`integrity::check`] passed as cleanly shut down.
fn open_checked(path: &Path) -> Result<Database, OpenError> {
    match quietly(|| builder().open(path)) {
        Some(Ok(db)) => Ok(db),
        Some(Err(e)) => Err(classify_open_error(path, e)),
        None => Err(OpenError::Corrupt {
            path: path.to_owned(),
            reason: "internal consistency check failed".into(),
        }),
    }
}

/// Runs `f`, turning a panic into `None` without printing it: redb may panic on a damaged
/// page, which the caller reports as damage in its own one line. Only panics of this thread
/// while `f` runs are silenced (the hook, installed once, wraps the one that was there).
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.ok()
}

/// The data directory of the database file `path`.
fn data_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The database holds password hashes: owner-only, whatever the umask.
fn restrict_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(file = %path.display(), error = %e, "cannot set database mode to 0600");
    }
}

fn classify_open_error(path: &Path, e: redb::DatabaseError) -> OpenError {
    use redb::{DatabaseError as D, StorageError as S};
    let path = path.to_owned();
    match e {
        D::DatabaseAlreadyOpen | D::LockProtocolMismatch => OpenError::InUse { path },
        D::UpgradeRequired(v) => OpenError::Corrupt {
            path,
            reason: format!("file format {v} needs a manual upgrade"),
        },
        D::Storage(S::Corrupted(reason)) => OpenError::Corrupt { path, reason },
        D::Storage(S::Io(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
            OpenError::NotADatabase {
                path,
                reason: io.to_string(),
            }
        }
        D::RepairAborted => OpenError::Corrupt {
            path,
            reason: "repair was aborted".into(),
        },
        other => OpenError::Other {
            path,
            reason: other.to_string(),
        },
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> DbResult<T> {
    serde_json::from_slice(bytes).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> DbResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| DbError::Corrupt(e.to_string()))
}

/// Counts the rows of a table (used by tests and `/metrics`).
fn count<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    def: redb::TableDefinition<K, V>,
) -> DbResult<u64> {
    Ok(tx.open_table(def)?.len()?)
}

#[cfg(test)]
mod tests {
    use super::testutil::temp_path;
    use super::*;

    #[test]
    fn fresh_database_is_at_current_version_and_reopens() {
        let path = temp_path("fresh");
        {
            let db = Db::open(&path, 10).unwrap();
            assert_eq!(db.schema_version().unwrap(), schema::current_version());
        }
        let db = Db::open(&path, 10).unwrap();
        assert_eq!(db.schema_version().unwrap(), schema::current_version());
    }

    #[test]
    fn garbage_file_is_corrupt_and_untouched() {
        let path = temp_path("garbage");
        let garbage: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &garbage).unwrap();
        let err = Db::open(&path, 10).err().unwrap();
        assert!(matches!(err, OpenError::NotADatabase { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
    }

    #[test]
    fn newer_schema_is_refused() {
        let path = temp_path("newer");
        {
            let db = Db::open(&path, 10).unwrap();
            let tx = db.inner.begin_write().unwrap();
            tx.open_table(schema::META)
                .unwrap()
                .insert(schema::SCHEMA_VERSION_KEY, 999)
                .unwrap();
            tx.commit().unwrap();
        }
        let err = Db::open(&path, 10).err().unwrap();
        assert!(matches!(err, OpenError::TooNew { found: 999, .. }), "{err}");
    }
}
