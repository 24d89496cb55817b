//! Users, their permissions and the "last administrator" invariant.

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::{PERMISSIONS, USERNAMES, USERS};
use super::{AuditEntry, Db, DbError, DbResult, decode, encode};
use crate::model::{AccountType, Permission, PermissionSet, User, now_iso};

/// The stored form of a user (permissions live in their own table).
#[derive(Serialize, Deserialize)]
pub(super) struct UserRecord {
    pub(super) username: String,
    account_type: AccountType,
    pub(super) disabled: bool,
    password_hash: String,
    token_version: u64,
    created_at: String,
    updated_at: String,
}

pub struct NewUser {
    pub username: String,
    pub account_type: AccountType,
    pub permissions: PermissionSet,
    pub password_hash: String,
}

/// A partial update. `bump_token_version` revokes every token issued so far; it is implied by
/// a password change, disabling, and deletion.
#[derive(Default)]
pub struct UserChange {
    pub password_hash: Option<String>,
    pub permissions: Option<PermissionSet>,
    pub disabled: Option<bool>,
    pub bump_token_version: bool,
}

const LAST_ADMIN: &str =
    "the last enabled user holding MANAGE_ADMIN_USERS cannot be deleted, disabled or lose it";

impl Db {
    pub fn user_count(&self) -> DbResult<u64> {
        let tx = self.begin_read()?;
        super::count(&tx, USERS)
    }

    pub fn user_by_uuid(&self, uuid: Uuid) -> DbResult<Option<User>> {
        let tx = self.begin_read()?;
        let users = tx.open_table(USERS)?;
        let perms = tx.open_table(PERMISSIONS)?;
        let Some(rec) = users.get(uuid.as_u128())? else {
            return Ok(None);
        };
        let rec: UserRecord = decode(rec.value(), "user")?;
        let bits = perms.get(uuid.as_u128())?.map(|v| v.value()).unwrap_or(0);
        Ok(Some(to_user(uuid, rec, bits)))
    }

    pub fn user_by_name(&self, username: &str) -> DbResult<Option<User>> {
        let uuid = {
            let tx = self.begin_read()?;
            let names = tx.open_table(USERNAMES)?;
            match names.get(username)? {
                Some(v) => Uuid::from_u128(v.value()),
                None => return Ok(None),
            }
        };
        self.user_by_uuid(uuid)
    }

    /// All users, ordered by username.
    pub fn list_users(&self) -> DbResult<Vec<User>> {
        let tx = self.inner.begin_read()?;
        let users = tx.open_table(USERS)?;
        let perms = tx.open_table(PERMISSIONS)?;
        let mut out = Vec::with_capacity(users.len()? as usize);
        for row in users.iter()? {
            let (k, v) = row?;
            let uuid = Uuid::from_u128(k.value());
            let rec: UserRecord = decode(v.value(), "user")?;
            let bits = perms.get(k.value())?.map(|v| v.value()).unwrap_or(0);
            out.push(to_user(uuid, rec, bits));
        }
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }

    /// Creates a user; a taken username is a conflict.
    pub fn create_user(&self, new: NewUser, audit: Option<AuditEntry>) -> DbResult<User> {
        let tx = self.begin_write()?;
        let uuid = Uuid::new_v4();
        let now = now_iso();
        let rec = UserRecord {
            username: new.username.clone(),
            account_type: new.account_type,
            disabled: false,
            password_hash: new.password_hash,
            token_version: 0,
            created_at: now.clone(),
            updated_at: now,
        };
        {
            let mut names = tx.open_table(USERNAMES)?;
            if names.get(new.username.as_str())?.is_some() {
                return Err(DbError::Conflict(format!(
                    "username {:?} is taken",
                    new.username
                )));
            }
            names.insert(new.username.as_str(), uuid.as_u128())?;
            tx.open_table(USERS)?
                .insert(uuid.as_u128(), encode(&rec)?.as_slice())?;
            tx.open_table(PERMISSIONS)?
                .insert(uuid.as_u128(), new.permissions.bits())?;
        }
        if let Some(entry) = audit {
            self.append_audit_in(&tx, &entry)?;
        }
        self.commit(tx)?;
        Ok(to_user(uuid, rec, new.permissions.bits()))
    }

    /// Applies `change` to the user and returns the updated user.
    pub fn update_user(
        &self,
        uuid: Uuid,
        change: UserChange,
        audit: Option<AuditEntry>,
    ) -> DbResult<User> {
        let tx = self.begin_write()?;
        let admins_before = enabled_admin_managers(&tx)?;
        let (rec, bits) = {
            let mut users = tx.open_table(USERS)?;
            let mut perms = tx.open_table(PERMISSIONS)?;
            let mut rec: UserRecord = match users.get(uuid.as_u128())? {
                Some(v) => decode(v.value(), "user")?,
                None => return Err(not_found(uuid)),
            };
            let mut bits = perms.get(uuid.as_u128())?.map(|v| v.value()).unwrap_or(0);
            let bump = change.bump_token_version
                || change.password_hash.is_some()
                || change.disabled == Some(true);
            if let Some(hash) = change.password_hash {
                rec.password_hash = hash;
            }
            if let Some(disabled) = change.disabled {
                rec.disabled = disabled;
            }
            if let Some(p) = change.permissions {
                bits = p.bits();
                perms.insert(uuid.as_u128(), bits)?;
            }
            if bump {
                rec.token_version += 1;
            }
            rec.updated_at = now_iso();
            users.insert(uuid.as_u128(), encode(&rec)?.as_slice())?;
            (rec, bits)
        };
        if admins_before > 0 && enabled_admin_managers(&tx)? == 0 {
            tx.abort()?;
            return Err(DbError::Conflict(LAST_ADMIN.into()));
        }
        if let Some(entry) = audit {
            self.append_audit_in(&tx, &entry)?;
        }
        self.commit(tx)?;
        Ok(to_user(uuid, rec, bits))
    }

    /// Deletes the user together with its permissions and subscriptions.
    pub fn delete_user(&self, uuid: Uuid, audit: Option<AuditEntry>) -> DbResult<User> {
        let tx = self.begin_write()?;
        let admins_before = enabled_admin_managers(&tx)?;
        let (rec, bits) = {
            let mut users = tx.open_table(USERS)?;
            let mut perms = tx.open_table(PERMISSIONS)?;
            let rec: UserRecord = match users.remove(uuid.as_u128())? {
                Some(v) => decode(v.value(), "user")?,
                None => return Err(not_found(uuid)),
            };
            let bits = perms
                .remove(uuid.as_u128())?
                .map(|v| v.value())
                .unwrap_or(0);
            tx.open_table(USERNAMES)?.remove(rec.username.as_str())?;
            let key = uuid.as_u128();
            tx.open_table(super::schema::SUBSCRIPTIONS)?
                .retain_in((key, 0)..=(key, u128::MAX), |_, _| false)?;
            tx.open_table(super::schema::MACHINE_CLIENTS)?
                .retain(|(_, user), _| user != key)?;
            tx.open_table(super::schema::MACHINE_OWNERS)?
                .retain(|_, owner| owner != key)?;
            (rec, bits)
        };
        if admins_before > 0 && enabled_admin_managers(&tx)? == 0 {
            tx.abort()?;
            return Err(DbError::Conflict(LAST_ADMIN.into()));
        }
        if let Some(entry) = audit {
            self.append_audit_in(&tx, &entry)?;
        }
        self.commit(tx)?;
        Ok(to_user(uuid, rec, bits))
    }
}

fn not_found(uuid: Uuid) -> DbError {
    DbError::NotFound(format!("no user {uuid}"))
}

/// Enabled users holding `MANAGE_ADMIN_USERS`, as seen inside `tx`.
fn enabled_admin_managers(tx: &WriteTransaction) -> DbResult<usize> {
    let users = tx.open_table(USERS)?;
    let perms = tx.open_table(PERMISSIONS)?;
    let mut n = 0;
    for row in perms.iter()? {
        let (k, v) = row?;
        if !PermissionSet::from_bits(v.value()).contains(Permission::ManageAdminUsers) {
            continue;
        }
        if let Some(rec) = users.get(k.value())? {
            let rec: UserRecord = decode(rec.value(), "user")?;
            if !rec.disabled {
                n += 1;
            }
        }
    }
    Ok(n)
}

fn to_user(uuid: Uuid, rec: UserRecord, bits: u32) -> User {
    User {
        uuid,
        username: rec.username,
        account_type: rec.account_type,
        permissions: PermissionSet::from_bits(bits),
        disabled: rec.disabled,
        password_hash: rec.password_hash,
        token_version: rec.token_version,
        created_at: rec.created_at,
        updated_at: rec.updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Db {
        let dir = std::env::temp_dir().join(format!("orchard-users-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Db::open(&dir.join("orchard.redb"), 100).unwrap()
    }

    fn new(name: &str, perms: PermissionSet) -> NewUser {
        NewUser {
            username: name.into(),
            account_type: AccountType::Administrator,
            permissions: perms,
            password_hash: "h".into(),
        }
    }

    #[test]
    fn create_lookup_and_duplicate() {
        let db = db();
        let u = db
            .create_user(new("alice", PermissionSet::all()), None)
            .unwrap();
        assert_eq!(db.user_by_name("alice").unwrap().unwrap().uuid, u.uuid);
        assert_eq!(
            db.user_by_uuid(u.uuid).unwrap().unwrap().permissions,
            PermissionSet::all()
        );
        assert!(matches!(
            db.create_user(new("alice", PermissionSet::EMPTY), None),
            Err(DbError::Conflict(_))
        ));
        assert_eq!(db.user_count().unwrap(), 1);
    }

    #[test]
    fn last_admin_manager_is_protected() {
        let db = db();
        let a = db
            .create_user(new("a", PermissionSet::all()), None)
            .unwrap();
        let strip = |db: &Db, id| {
            db.update_user(
                id,
                UserChange {
                    permissions: Some(PermissionSet::EMPTY),
                    ..Default::default()
                },
                None,
            )
        };
        assert!(matches!(strip(&db, a.uuid), Err(DbError::Conflict(_))));
        assert!(matches!(
            db.update_user(
                a.uuid,
                UserChange {
                    disabled: Some(true),
                    ..Default::default()
                },
                None
            ),
            Err(DbError::Conflict(_))
        ));
        assert!(matches!(
            db.delete_user(a.uuid, None),
            Err(DbError::Conflict(_))
        ));
        // Still intact after the refused changes.
        let still = db.user_by_uuid(a.uuid).unwrap().unwrap();
        assert!(!still.disabled);
        assert_eq!(still.permissions, PermissionSet::all());
        // With a second holder, the first may go.
        db.create_user(new("b", PermissionSet::all()), None)
            .unwrap();
        strip(&db, a.uuid).unwrap();
        db.delete_user(a.uuid, None).unwrap();
        assert!(db.user_by_name("a").unwrap().is_none());
    }

    #[test]
    fn password_change_and_disable_bump_token_version() {
        let db = db();
        db.create_user(new("root", PermissionSet::all()), None)
            .unwrap();
        let u = db
            .create_user(new("c", PermissionSet::EMPTY), None)
            .unwrap();
        let u1 = db
            .update_user(
                u.uuid,
                UserChange {
                    password_hash: Some("h2".into()),
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(u1.token_version, u.token_version + 1);
        let u2 = db
            .update_user(
                u.uuid,
                UserChange {
                    disabled: Some(true),
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(u2.token_version, u1.token_version + 1);
        let u3 = db
            .update_user(
                u.uuid,
                UserChange {
                    disabled: Some(false),
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(u3.token_version, u2.token_version);
    }
}
