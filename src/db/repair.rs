//! `orchard db repair`: what can honestly be done for a damaged database file.
//!
//! redb's own repair is crash recovery: it rolls back a commit that did not reach the disk
//! whole and rebuilds its page allocator. It cannot mend a page damaged after it was written
//! (bytes changed mid-file): that page belongs to the only committed tree, so the integrity
//! check that refused the file fails again. What remains is to salvage: read every row that
//! still reads back, check it, and write the rows into a fresh file.
//!
//! Each table is read forwards from its first key until a row fails (an error, a panic, a key
//! out of order), then backwards from its last key until it meets the rows already read or
//! fails too. So a damaged leaf page loses its own rows, a damaged branch page the rows below
//! it, and damage in the table directory the tables it names. Rows read are then checked:
//! records must decode and agree with their key, permission masks must hold only known
//! permissions, relations must name a surviving user; the username index is rebuilt from the
//! users. A fixed-width row (a permission mask, an owner) read from a damaged page that still
//! passes these checks cannot be told from a good one. The damaged file is first copied aside
//! (`<file>.damaged-<UTC time>`, never over an earlier copy) and is only replaced, by rename,
//! once the fresh file passes the same check as a start.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use redb::{Key, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::integrity::{self, Health};
use super::scratch::Scratch;
use super::users::UserRecord;
use super::{
    AlertRecord, AuditEntry, ClusterRecord, Db, OpenError, ServerRecord, builder, decode, quietly,
    schema,
};
use crate::model::{Permission, PermissionSet};

/// What `repair` did.
#[derive(Debug)]
pub enum Outcome {
    /// The file passed the check: nothing was changed.
    Healthy,
    /// The file was left by a crash and was recovered, as a start would have done.
    Recovered,
    /// The file was damaged: a copy was kept and the readable rows were salvaged.
    Repaired(Salvage),
}

#[derive(Debug)]
pub struct Salvage {
    /// Why the check refused the file.
    pub damage: String,
    /// The copy of the damaged file.
    pub copy: PathBuf,
    pub tables: Vec<TableCount>,
    /// Users in the repaired file, by name.
    pub users_kept: Vec<String>,
    /// Users the damaged file still names (in its username index) but whose record was lost.
    pub users_lost: Vec<String>,
    /// Further users the file recorded but that neither table names any more.
    pub users_lost_unnamed: u64,
    /// Kept users whose permission row was lost or invalid: they now have none.
    pub permissions_lost: Vec<String>,
    /// Anything else the operator must know.
    pub notes: Vec<String>,
}

/// One table's rows: as recorded by the damaged file, read back and kept.
#[derive(Debug)]
pub struct TableCount {
    pub name: &'static str,
    /// The row count the damaged file recorded (itself unverified); `None` when unreadable.
    pub recorded: Option<u64>,
    /// Rows read back.
    pub read: u64,
    /// Rows written to the repaired file (read and valid; the username index is rebuilt).
    pub kept: u64,
    /// Every row between the first and the last key was read.
    pub complete: bool,
}

/// Checks the database at `path` and, when it is damaged, repairs it; see the module
/// documentation. The error is one line.
pub fn repair(path: &Path) -> Result<Outcome, String> {
    if !path.is_file() {
        return Err(format!("no database at {}", path.display()));
    }
    let damage = match integrity::check(path) {
        Ok(Health::Clean) => return Ok(Outcome::Healthy),
        Ok(Health::NeedsRecovery) => {
            drop(integrity::recover(path).map_err(|e| e.to_string())?);
            return Ok(Outcome::Recovered);
        }
        Err(OpenError::Corrupt { reason, .. }) => reason,
        Err(e) => return Err(e.to_string()),
    };
    let copy = integrity::keep_copy(path, "damaged").map_err(|e| {
        format!(
            "cannot copy {} aside ({e}); nothing was changed",
            path.display()
        )
    })?;
    let unchanged = |why: String| {
        format!(
            "{why}; {} is unchanged, and a copy is {}",
            path.display(),
            copy.display()
        )
    };
    // Read through the overlay: the damaged file is not written, and its lock is held (no
    // daemon can open it) until it has been replaced.
    let scratch = Scratch::open(path).map_err(|e| unchanged(format!("cannot read it: {e}")))?;
    let db = quietly(|| builder().create_with_backend(scratch))
        .unwrap_or_else(|| {
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                "a consistency check failed".into(),
            )))
        })
        .map_err(|e| {
            unchanged(format!(
                "redb cannot open the damaged file to read it ({e})"
            ))
        })?;
    let tx = db
        .begin_read()
        .map_err(|e| unchanged(format!("cannot read the damaged file ({e})")))?;
    let cap = usize::try_from(fs::metadata(path).map(|m| m.len()).unwrap_or(0)).unwrap_or(0);
    let read = read_all(&tx, cap);
    if let Some(found) = read.schema_version
        && found > schema::current_version()
    {
        return Err(unchanged(format!(
            "it has schema version {found}, newer than this orchard supports ({}); upgrade orchard",
            schema::current_version()
        )));
    }
    if !read.any_opened() {
        return Err(unchanged(
            "nothing could be read: the table directory is damaged (move the file away to start with an empty database)".into(),
        ));
    }
    let (fresh, mut salvage) = check_rows(read);
    salvage.damage = damage;
    salvage.copy = copy.clone();

    let tmp = PathBuf::from(format!("{}.repairing", path.display()));
    let _ = fs::remove_file(&tmp);
    let written = write_fresh(&tmp, &fresh, &salvage).and_then(|()| match integrity::check(&tmp) {
        Ok(Health::Clean) => Ok(()),
        Ok(Health::NeedsRecovery) => Err("the repaired file was not closed cleanly".into()),
        Err(e) => Err(format!("the repaired file does not pass the check: {e}")),
    });
    let replaced = written.and_then(|()| {
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)))
            .and_then(|()| fs::rename(&tmp, path))
            .and_then(|()| integrity::sync_dir(path))
            .map_err(|e| format!("cannot put the repaired file in place: {e}"))
    });
    // Closing commits the allocator state (into the overlay), walking trees that may be
    // damaged: a panic there changes nothing on disk.
    let _ = quietly(move || {
        drop(tx);
        drop(db);
    });
    if let Err(e) = replaced {
        let _ = fs::remove_file(&tmp);
        return Err(unchanged(e));
    }
    Ok(Outcome::Repaired(salvage))
}

/// Rows of one table as read: (key bytes, row).
struct Rows<T> {
    rows: Vec<(Vec<u8>, T)>,
    recorded: Option<u64>,
    complete: bool,
    /// The table directory named the table and it could be opened.
    opened: bool,
}

/// Reads `def` forwards until a row fails, then backwards until it meets what was read.
fn salvage<K, V, T>(
    tx: &ReadTransaction,
    def: redb::TableDefinition<K, V>,
    cap: usize,
    take: impl for<'a> Fn(K::SelfType<'a>, V::SelfType<'a>) -> T,
) -> Rows<T>
where
    K: Key + 'static,
    V: redb::Value + 'static,
{
    let mut forward: Vec<(Vec<u8>, T)> = Vec::new();
    let mut recorded = None;
    let mut opened = false;
    let forward_done = quietly(|| {
        let table = match tx.open_table(def) {
            Ok(t) => {
                opened = true;
                t
            }
            // Absent: an older schema never created it (or the directory lost it).
            Err(redb::TableError::TableDoesNotExist(_)) => return true,
            Err(_) => return false,
        };
        recorded = table.len().ok();
        let Ok(rows) = table.iter() else {
            return false;
        };
        for row in rows {
            let Ok((k, v)) = row else {
                return false;
            };
            let key = K::as_bytes(&k.value()).as_ref().to_vec();
            let ordered = forward
                .last()
                .is_none_or(|(last, _)| K::compare(last, &key) == Ordering::Less);
            if !ordered || forward.len() >= cap {
                return false;
            }
            let row = take(k.value(), v.value());
            forward.push((key, row));
        }
        true
    })
    .unwrap_or(false);
    if forward_done {
        return Rows {
            rows: forward,
            recorded,
            complete: true,
            opened,
        };
    }
    let seen: HashSet<Vec<u8>> = forward.iter().map(|(k, _)| k.clone()).collect();
    let mut backward: Vec<(Vec<u8>, T)> = Vec::new();
    let met = quietly(|| {
        let Ok(table) = tx.open_table(def) else {
            return false;
        };
        let Ok(rows) = table.iter() else {
            return false;
        };
        for row in rows.rev() {
            let Ok((k, v)) = row else {
                return false;
            };
            let key = K::as_bytes(&k.value()).as_ref().to_vec();
            if seen.contains(&key) {
                return true;
            }
            let ordered = backward
                .last()
                .is_none_or(|(prev, _)| K::compare(&key, prev) == Ordering::Less);
            if !ordered || forward.len() + backward.len() >= cap {
                return false;
            }
            let row = take(k.value(), v.value());
            backward.push((key, row));
        }
        true
    })
    .unwrap_or(false);
    forward.extend(backward);
    Rows {
        rows: forward,
        recorded,
        complete: met,
        opened,
    }
}

/// Everything read from the damaged file.
struct Read {
    schema_version: Option<u64>,
    users: Rows<(u128, Vec<u8>)>,
    usernames: Rows<(String, u128)>,
    permissions: Rows<(u128, u32)>,
    subscriptions: Rows<(u128, u128)>,
    owners: Rows<(u128, u128)>,
    clients: Rows<(u128, u128)>,
    clusters: Rows<(String, Vec<u8>)>,
    servers: Rows<(String, Vec<u8>)>,
    audit: Rows<(u64, Vec<u8>)>,
    alerts: Rows<(u64, Vec<u8>)>,
}

impl Read {
    /// Whether any table could be opened at all.
    fn any_opened(&self) -> bool {
        self.users.opened
            || self.usernames.opened
            || self.permissions.opened
            || self.subscriptions.opened
            || self.owners.opened
            || self.clients.opened
            || self.clusters.opened
            || self.servers.opened
            || self.audit.opened
            || self.alerts.opened
    }
}

fn read_all(tx: &ReadTransaction, cap: usize) -> Read {
    let meta = salvage(tx, schema::META, cap, |k, v| (k.to_owned(), v));
    Read {
        schema_version: meta
            .rows
            .iter()
            .find(|(_, (k, _))| k == schema::SCHEMA_VERSION_KEY)
            .map(|(_, (_, v))| *v),
        users: salvage(tx, schema::USERS, cap, |k, v| (k, v.to_vec())),
        usernames: salvage(tx, schema::USERNAMES, cap, |k, v| (k.to_owned(), v)),
        permissions: salvage(tx, schema::PERMISSIONS, cap, |k, v| (k, v)),
        subscriptions: salvage(tx, schema::SUBSCRIPTIONS, cap, |k, ()| k),
        owners: salvage(tx, schema::MACHINE_OWNERS, cap, |k, v| (k, v)),
        clients: salvage(tx, schema::MACHINE_CLIENTS, cap, |k, ()| k),
        clusters: salvage(tx, schema::CLUSTERS, cap, |k, v| (k.to_owned(), v.to_vec())),
        servers: salvage(tx, schema::SERVERS, cap, |k, v| (k.to_owned(), v.to_vec())),
        audit: salvage(tx, schema::AUDIT, cap, |k, v| (k, v.to_vec())),
        alerts: salvage(tx, schema::ALERTS, cap, |k, v| (k, v.to_vec())),
    }
}

/// The rows that go into the fresh file.
#[derive(Default)]
struct Fresh {
    users: BTreeMap<u128, (String, Vec<u8>)>,
    permissions: Vec<(u128, u32)>,
    subscriptions: Vec<(u128, u128)>,
    owners: Vec<(u128, u128)>,
    clients: Vec<(u128, u128)>,
    clusters: Vec<(String, Vec<u8>)>,
    servers: Vec<(String, Vec<u8>)>,
    audit: Vec<(u64, Vec<u8>)>,
    alerts: Vec<(u64, Vec<u8>)>,
}

fn count<T>(name: &'static str, rows: &Rows<T>, kept: usize) -> TableCount {
    TableCount {
        name,
        recorded: rows.recorded,
        read: rows.rows.len() as u64,
        kept: kept as u64,
        complete: rows.complete,
    }
}

/// Keeps the rows that pass their checks (module documentation) and counts them.
fn check_rows(read: Read) -> (Fresh, Salvage) {
    let mut fresh = Fresh::default();
    let mut names = HashSet::new();
    for (_, (uuid, bytes)) in &read.users.rows {
        let Ok(rec) = decode::<UserRecord>(bytes, "user") else {
            continue;
        };
        if *uuid == 0
            || crate::model::validate_username(&rec.username).is_err()
            || !names.insert(rec.username.clone())
        {
            continue;
        }
        fresh.users.insert(*uuid, (rec.username, bytes.clone()));
    }
    let known = |uuid: &u128| fresh.users.contains_key(uuid);
    let mut with_permissions = HashSet::new();
    for (_, (uuid, bits)) in &read.permissions.rows {
        if known(uuid) && PermissionSet::from_bits(*bits).bits() == *bits {
            with_permissions.insert(*uuid);
            fresh.permissions.push((*uuid, *bits));
        }
    }
    fresh.subscriptions = rows_where(&read.subscriptions, |(user, _)| known(user));
    fresh.owners = rows_where(&read.owners, |(_, owner)| known(owner));
    fresh.clients = rows_where(&read.clients, |(_, user)| known(user));
    for (_, (name, bytes)) in &read.clusters.rows {
        if decode::<ClusterRecord>(bytes, "cluster").is_ok_and(|c| c.name == *name) {
            fresh.clusters.push((name.clone(), bytes.clone()));
        }
    }
    for (_, (id, bytes)) in &read.servers.rows {
        if decode::<ServerRecord>(bytes, "server").is_ok_and(|s| s.server_id == *id) {
            fresh.servers.push((id.clone(), bytes.clone()));
        }
    }
    for (_, (seq, bytes)) in &read.audit.rows {
        if *seq > 0 && decode::<AuditEntry>(bytes, "audit entry").is_ok() {
            fresh.audit.push((*seq, bytes.clone()));
        }
    }
    for (_, (seq, bytes)) in &read.alerts.rows {
        if *seq > 0 && decode::<AlertRecord>(bytes, "alert").is_ok() {
            fresh.alerts.push((*seq, bytes.clone()));
        }
    }

    let mut users_kept: Vec<String> = fresh.users.values().map(|(n, _)| n.clone()).collect();
    users_kept.sort();
    let mut users_lost: Vec<String> = read
        .usernames
        .rows
        .iter()
        .filter(|(_, (name, uuid))| !known(uuid) && !users_kept.contains(name))
        .map(|(_, (name, _))| name.clone())
        .collect();
    users_lost.sort();
    users_lost.dedup();
    let users_lost_unnamed = read
        .users
        .recorded
        .unwrap_or(0)
        .saturating_sub((users_kept.len() + users_lost.len()) as u64);
    let mut permissions_lost: Vec<String> = fresh
        .users
        .iter()
        .filter(|(uuid, _)| !with_permissions.contains(uuid))
        .map(|(_, (name, _))| name.clone())
        .collect();
    permissions_lost.sort();

    let mut notes = Vec::new();
    if fresh.users.is_empty() {
        notes.push(
            "no user survived: the next start creates `admin` as on a first start".to_owned(),
        );
    } else if !fresh.users.iter().any(|(uuid, (_, bytes))| {
        let enabled = decode::<UserRecord>(bytes, "user").is_ok_and(|r| !r.disabled);
        let bits = fresh
            .permissions
            .iter()
            .find(|(u, _)| u == uuid)
            .map_or(0, |(_, b)| *b);
        enabled && PermissionSet::from_bits(bits).contains(Permission::ManageAdminUsers)
    }) {
        notes.push(
            "no enabled user holds MANAGE_ADMIN_USERS any more: add one with `orchard user add NAME --password-stdin --account-type administrator`".to_owned(),
        );
    }
    if read.schema_version.is_none() {
        notes.push(
            "the schema version was unreadable; the rows were taken as the current schema's"
                .to_owned(),
        );
    }

    let tables = vec![
        count("users", &read.users, fresh.users.len()),
        TableCount {
            name: "usernames",
            recorded: read.usernames.recorded,
            read: read.usernames.rows.len() as u64,
            kept: fresh.users.len() as u64,
            complete: read.usernames.complete,
        },
        count("permissions", &read.permissions, fresh.permissions.len()),
        count(
            "subscriptions",
            &read.subscriptions,
            fresh.subscriptions.len(),
        ),
        count("machine_owners", &read.owners, fresh.owners.len()),
        count("machine_clients", &read.clients, fresh.clients.len()),
        count("clusters", &read.clusters, fresh.clusters.len()),
        count("servers", &read.servers, fresh.servers.len()),
        count("audit", &read.audit, fresh.audit.len()),
        count("alerts", &read.alerts, fresh.alerts.len()),
    ];
    let salvage = Salvage {
        damage: String::new(),
        copy: PathBuf::new(),
        tables,
        users_kept,
        users_lost,
        users_lost_unnamed,
        permissions_lost,
        notes,
    };
    (fresh, salvage)
}

fn rows_where(
    rows: &Rows<(u128, u128)>,
    keep: impl Fn(&(u128, u128)) -> bool,
) -> Vec<(u128, u128)> {
    rows.rows
        .iter()
        .map(|(_, r)| *r)
        .filter(|r| keep(r))
        .collect()
}

/// Creates a database at `tmp` (current schema) holding `fresh`, plus an audit entry of the
/// repair, in one transaction, and closes it.
fn write_fresh(tmp: &Path, fresh: &Fresh, salvage: &Salvage) -> Result<(), String> {
    let db = Db::open(tmp, u64::MAX).map_err(|e| e.to_string())?;
    let fail = |e: &dyn std::fmt::Display| format!("cannot write the repaired file: {e}");
    let tx = db.begin_write().map_err(|e| fail(&e))?;
    {
        let mut users = tx.open_table(schema::USERS).map_err(|e| fail(&e))?;
        let mut names = tx.open_table(schema::USERNAMES).map_err(|e| fail(&e))?;
        for (uuid, (name, bytes)) in &fresh.users {
            users
                .insert(*uuid, bytes.as_slice())
                .map_err(|e| fail(&e))?;
            names.insert(name.as_str(), *uuid).map_err(|e| fail(&e))?;
        }
        let mut t = tx.open_table(schema::PERMISSIONS).map_err(|e| fail(&e))?;
        for (uuid, bits) in &fresh.permissions {
            t.insert(*uuid, *bits).map_err(|e| fail(&e))?;
        }
        let mut t = tx.open_table(schema::SUBSCRIPTIONS).map_err(|e| fail(&e))?;
        for pair in &fresh.subscriptions {
            t.insert(*pair, ()).map_err(|e| fail(&e))?;
        }
        let mut t = tx
            .open_table(schema::MACHINE_OWNERS)
            .map_err(|e| fail(&e))?;
        for (machine, owner) in &fresh.owners {
            t.insert(*machine, *owner).map_err(|e| fail(&e))?;
        }
        let mut t = tx
            .open_table(schema::MACHINE_CLIENTS)
            .map_err(|e| fail(&e))?;
        for pair in &fresh.clients {
            t.insert(*pair, ()).map_err(|e| fail(&e))?;
        }
        let mut t = tx.open_table(schema::CLUSTERS).map_err(|e| fail(&e))?;
        for (name, bytes) in &fresh.clusters {
            t.insert(name.as_str(), bytes.as_slice())
                .map_err(|e| fail(&e))?;
        }
        let mut t = tx.open_table(schema::SERVERS).map_err(|e| fail(&e))?;
        for (id, bytes) in &fresh.servers {
            t.insert(id.as_str(), bytes.as_slice())
                .map_err(|e| fail(&e))?;
        }
        let mut t = tx.open_table(schema::AUDIT).map_err(|e| fail(&e))?;
        for (seq, bytes) in &fresh.audit {
            t.insert(*seq, bytes.as_slice()).map_err(|e| fail(&e))?;
        }
        let mut t = tx.open_table(schema::ALERTS).map_err(|e| fail(&e))?;
        for (seq, bytes) in &fresh.alerts {
            t.insert(*seq, bytes.as_slice()).map_err(|e| fail(&e))?;
        }
    }
    let lost: u64 = salvage
        .tables
        .iter()
        .map(|t| t.recorded.unwrap_or(0).saturating_sub(t.kept))
        .sum();
    let entry = AuditEntry::new("cli", "db.repair")
        .target(salvage.copy.display().to_string())
        .detail(format!(
            "salvaged after damage ({}); {} users kept, about {lost} rows lost",
            salvage.damage,
            fresh.users.len()
        ));
    db.append_audit_in(&tx, &entry).map_err(|e| fail(&e))?;
    db.commit(tx).map_err(|e| fail(&e))?;
    drop(db);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testutil::{copies, crash_image, damage_record, populated, user_name};

    #[test]
    fn a_damaged_record_is_lost_and_every_other_row_kept() {
        let path = populated("repair", 12);
        assert!(damage_record(&path, &user_name(5)) > 0);
        let damaged = fs::read(&path).unwrap();
        let Ok(Outcome::Repaired(s)) = repair(&path) else {
            panic!("not repaired");
        };
        // The copy aside is the damaged file.
        assert_eq!(copies(&path, "damaged-"), vec![s.copy.clone()]);
        assert!(fs::read(&s.copy).unwrap() == damaged);
        let expected: Vec<String> = (0..12).filter(|i| *i != 5).map(user_name).collect();
        assert_eq!(s.users_kept, expected);
        assert_eq!(s.users_lost, vec![user_name(5)]);
        assert_eq!(s.users_lost_unnamed, 0);
        let users = s.tables.iter().find(|t| t.name == "users").unwrap();
        assert_eq!((users.recorded, users.kept), (Some(12), 11));
        // The audit log is whole (the repair's own entry comes on top).
        let audit = s.tables.iter().find(|t| t.name == "audit").unwrap();
        assert_eq!((audit.recorded, audit.kept), (Some(12), 12));
        // The repaired file opens, with exactly those users and their permissions.
        let db = Db::open(&path, 1000).unwrap();
        let users = db.list_users().unwrap();
        let names: Vec<String> = users.iter().map(|u| u.username.clone()).collect();
        assert_eq!(names, expected);
        assert_eq!(users[0].permissions, PermissionSet::all());
        assert!(db.user_by_name(&user_name(7)).unwrap().is_some());
        let last = db.recent_audit(1).unwrap();
        assert_eq!(last[0].action, "db.repair");
    }

    #[test]
    fn a_healthy_or_crashed_file_is_not_salvaged() {
        let path = populated("healthy", 3);
        let before = fs::read(&path).unwrap();
        assert!(matches!(repair(&path), Ok(Outcome::Healthy)));
        assert!(fs::read(&path).unwrap() == before);
        let crashed = crash_image("crashed", 3);
        assert!(matches!(repair(&crashed), Ok(Outcome::Recovered)));
        assert!(copies(&crashed, "damaged-").is_empty());
        assert_eq!(
            Db::open(&crashed, 10).unwrap().list_users().unwrap().len(),
            3
        );
    }
}
