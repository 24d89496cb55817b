//! Opening an existing database without writing to one it then refuses.
//!
//! [`check`] opens the file through [`Scratch`] (every write stays in memory) with redb's
//! integrity check: the checksum of every page of the committed trees is verified, and a
//! file left by a crash is recovered, in memory. Then every row of every table is read. Only
//! a file that passes is opened for real. A file that needs crash recovery is copied aside
//! first; if the recovery or the reading after it fails, the copy is put back, so the file
//! ends as it was (byte for byte) and the open is refused.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::scratch::Scratch;
use super::{OpenError, builder, classify_open_error, quietly, schema};

/// The state of a file that passed [`check`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Health {
    /// Shut down cleanly: a plain open writes nothing but its own header flag.
    Clean,
    /// Left by a crash (or a kill): the open will recover it.
    NeedsRecovery,
}

/// Checks `path` without writing to it; see the module documentation.
pub(super) fn check(path: &Path) -> Result<Health, OpenError> {
    let len = fs::metadata(path)
        .map_err(|e| OpenError::Other {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .len();
    if len == 0 {
        return Err(OpenError::NotADatabase {
            path: path.to_owned(),
            reason: "the file is empty".into(),
        });
    }
    let scratch = Scratch::open(path).map_err(|e| OpenError::Other {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let checked = quietly(|| {
        let mut b = builder();
        b.set_check_integrity_on_open(true);
        let db = b
            .create_with_backend(scratch)
            .map_err(|e| classify_open_error(path, e))?;
        let tx = db.begin_read().map_err(|e| corrupt(path, e))?;
        let version = schema_version(&tx).map_err(|e| corrupt(path, e))?;
        if version > schema::current_version() {
            return Err(OpenError::TooNew {
                path: path.to_owned(),
                found: version,
                supported: schema::current_version(),
            });
        }
        read_every_table(&tx).map_err(|e| corrupt(path, e))
    });
    match checked {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(e),
        None => return Err(corrupt(path, "a consistency check failed while reading it")),
    }
    // The check passed. Only a file left by a crash is refused by a read-only open.
    match quietly(|| builder().open_read_only(path).map(drop)) {
        Some(Ok(())) => Ok(Health::Clean),
        Some(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(OpenError::InUse {
            path: path.to_owned(),
        }),
        _ => Ok(Health::NeedsRecovery),
    }
}

fn corrupt(path: &Path, reason: impl ToString) -> OpenError {
    OpenError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The schema version recorded in the file (0 before the first migration).
pub(super) fn schema_version(tx: &ReadTransaction) -> Result<u64, String> {
    let meta = match tx.open_table(schema::META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    Ok(meta
        .get(schema::SCHEMA_VERSION_KEY)
        .map_err(|e| e.to_string())?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Reads every row of every table (a table an older schema lacks is skipped); the rows read
/// must be as many as the table records.
pub(super) fn read_every_table(tx: &ReadTransaction) -> Result<(), String> {
    read_table(tx, schema::META)?;
    read_table(tx, schema::USERS)?;
    read_table(tx, schema::USERNAMES)?;
    read_table(tx, schema::PERMISSIONS)?;
    read_table(tx, schema::SUBSCRIPTIONS)?;
    read_table(tx, schema::MACHINE_OWNERS)?;
    read_table(tx, schema::MACHINE_CLIENTS)?;
    read_table(tx, schema::CLUSTERS)?;
    read_table(tx, schema::SERVERS)?;
    read_table(tx, schema::AUDIT)?;
    read_table(tx, schema::ALERTS)?;
    Ok(())
}

fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<(), String> {
    let name = redb::TableHandle::name(&def).to_owned();
    let table = match tx.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(format!("table {name}: {e}")),
    };
    let stored = table.len().map_err(|e| format!("table {name}: {e}"))?;
    let mut read = 0u64;
    for row in table.iter().map_err(|e| format!("table {name}: {e}"))? {
        let (k, v) = row.map_err(|e| format!("table {name}: {e}"))?;
        // Decode both: a fixed-width value of the wrong size fails here, not later.
        std::hint::black_box((k.value(), v.value()));
        read += 1;
    }
    if read != stored {
        return Err(format!("table {name}: {read} rows read, {stored} recorded"));
    }
    Ok(())
}

/// Opens a file [`check`] found left by a crash: copies it aside, lets redb recover it, and
/// reads every table. On success the copy is removed; on failure the copy is put back in the
/// file's place (the file is then as it was, byte for byte) and the open is refused.
pub(super) fn recover(path: &Path) -> Result<Database, OpenError> {
    recover_with(path, |db| {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        read_every_table(&tx)
    })
}

pub(super) fn recover_with(
    path: &Path,
    verify: impl FnOnce(&Database) -> Result<(), String>,
) -> Result<Database, OpenError> {
    let copy = keep_copy(path, "before-recovery").map_err(|e| OpenError::Other {
        path: path.to_owned(),
        reason: format!(
            "it needs crash recovery, and a copy could not be kept first ({e}); it was left untouched"
        ),
    })?;
    tracing::warn!(
        file = %path.display(),
        copy = %copy.display(),
        "database was not shut down cleanly: recovering it"
    );
    let recovered = quietly(|| match builder().open(path) {
        Ok(db) => match verify(&db) {
            Ok(()) => Ok(db),
            Err(reason) => Err(reason),
        },
        Err(e) => Err(e.to_string()),
    })
    .unwrap_or_else(|| Err("a consistency check failed while recovering it".into()));
    match recovered {
        Ok(db) => {
            if let Err(e) = fs::remove_file(&copy) {
                tracing::warn!(copy = %copy.display(), error = %e, "cannot remove the copy kept for the recovery");
            }
            tracing::info!(file = %path.display(), "database recovered");
            Ok(db)
        }
        Err(reason) => {
            // The failed handle is closed (dropped) by now; put the file back as it was.
            match fs::rename(&copy, path).and_then(|()| sync_dir(path)) {
                Ok(()) => Err(OpenError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("crash recovery failed: {reason}"),
                }),
                Err(e) => Err(OpenError::Other {
                    path: path.to_owned(),
                    reason: format!(
                        "crash recovery failed ({reason}), and the copy taken before it could not be put back ({e}): it is {}",
                        copy.display()
                    ),
                }),
            }
        }
    }
}

/// Copies `path` to `<path>.<what>-<UTC time>` (mode 0600, synced), never over an existing
/// file: a second copy in the same second gets `-2`, `-3`, …
pub(super) fn keep_copy(path: &Path, what: &str) -> std::io::Result<PathBuf> {
    let stamp = utc_stamp();
    let base = format!("{}.{what}-{stamp}", path.display());
    let mut src = fs::File::open(path)?;
    for n in 1..1000 {
        let candidate = if n == 1 {
            PathBuf::from(&base)
        } else {
            PathBuf::from(format!("{base}-{n}"))
        };
        let mut dst = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&candidate)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let copied = std::io::copy(&mut src, &mut dst)
            .and_then(|_| dst.flush())
            .and_then(|()| dst.sync_all())
            .and_then(|()| sync_dir(&candidate));
        if let Err(e) = copied {
            drop(dst);
            let _ = fs::remove_file(&candidate);
            return Err(e);
        }
        return Ok(candidate);
    }
    Err(std::io::Error::other(format!("{base}: too many copies")))
}

/// `20261205T101500Z`.
pub(super) fn utc_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    now.format(&format)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Makes a rename or a new file in `path`'s directory durable.
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::File::open(dir)?.sync_all(),
        _ => fs::File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use crate::db::testutil::{copies, crash_image, damage_record, populated, user_name};

    #[test]
    fn a_clean_file_passes_and_is_not_written() {
        let path = populated("clean", 12);
        let before = fs::read(&path).unwrap();
        assert_eq!(check(&path).unwrap(), Health::Clean);
        assert!(
            fs::read(&path).unwrap() == before,
            "the check wrote to the file"
        );
    }

    #[test]
    fn a_damaged_file_is_refused_and_left_byte_for_byte() {
        let path = populated("damaged", 12);
        assert!(damage_record(&path, &user_name(5)) > 0);
        let before = fs::read(&path).unwrap();
        for _ in 0..2 {
            let err = Db::open(&path, 10).err().unwrap();
            assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
            let line = err.to_string();
            assert!(line.contains("orchard db repair --data-dir"), "{line}");
            assert_eq!(line.lines().count(), 1, "{line}");
            assert!(
                fs::read(&path).unwrap() == before,
                "the refused file was written"
            );
        }
        // Nothing was made beside it either.
        assert!(copies(&path, "").is_empty(), "{:?}", copies(&path, ""));
    }

    #[test]
    fn a_crash_image_is_recovered_at_open_and_its_copy_removed() {
        let path = crash_image("crash", 6);
        let before = fs::read(&path).unwrap();
        assert_eq!(check(&path).unwrap(), Health::NeedsRecovery);
        assert!(
            fs::read(&path).unwrap() == before,
            "the check wrote to the file"
        );
        let db = Db::open(&path, 10).unwrap();
        let names: Vec<String> = db
            .list_users()
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, (0..6).map(user_name).collect::<Vec<_>>());
        drop(db);
        assert!(copies(&path, "before-recovery").is_empty());
        assert_eq!(check(&path).unwrap(), Health::Clean);
    }

    #[test]
    fn a_failed_recovery_puts_the_file_back_byte_for_byte() {
        let path = crash_image("recovery-fails", 6);
        let before = fs::read(&path).unwrap();
        let err = recover_with(&path, |_| Err("forced failure".into()))
            .err()
            .unwrap();
        assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("orchard db repair"), "{err}");
        assert!(
            fs::read(&path).unwrap() == before,
            "the file was not put back"
        );
        assert!(copies(&path, "before-recovery").is_empty());
    }

    #[test]
    fn copies_never_overwrite_an_earlier_one() {
        let path = populated("copies", 2);
        let a = keep_copy(&path, "damaged").unwrap();
        let b = keep_copy(&path, "damaged").unwrap();
        let c = keep_copy(&path, "damaged").unwrap();
        assert!(a != b && b != c && a != c, "{a:?} {b:?} {c:?}");
        let original = fs::read(&path).unwrap();
        for copy in [a, b, c] {
            assert!(fs::read(&copy).unwrap() == original);
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
