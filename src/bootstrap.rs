//! First start: the `admin` account. Every start: a warning about client accounts that
//! hold user-management permissions (granted before clients were refused them).

use std::path::Path;

use crate::auth::password::hash_blocking;
use crate::db::{AuditEntry, Db, NewUser};
use crate::model::{AccountType, PermissionSet, validate_password};
use crate::secrets;

/// Creates `admin` with every permission when the database has no user. The password is
/// `admin_password` when given, else random and written to `<data-dir>/initial-admin-password`
/// (0600). The log names the file, never the password.
pub fn ensure_admin(
    db: &Db,
    data_dir: &Path,
    admin_password: Option<String>,
) -> Result<(), String> {
    if db.user_count().map_err(|e| e.to_string())? > 0 {
        return Ok(());
    }
    let (password, file) = match admin_password {
        Some(p) => {
            validate_password(&p).map_err(|e| format!("ORCHARD_ADMIN_PASSWORD: {e}"))?;
            (p, None)
        }
        None => {
            let p = secrets::random_password().map_err(|e| e.to_string())?;
            (p, Some(()))
        }
    };
    let hash = hash_blocking(&password).map_err(|e| e.to_string())?;
    // Write the file before the user exists, so a crash in between never leaves an admin
    // whose password nobody knows.
    let file = match file {
        Some(()) => {
            Some(secrets::write_initial_password(data_dir, &password).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    db.create_user(
        NewUser {
            username: "admin".into(),
            account_type: AccountType::Administrator,
            permissions: PermissionSet::all(),
            password_hash: hash,
        },
        Some(AuditEntry::new("orchard", "user.create").target("admin")),
    )
    .map_err(|e| e.to_string())?;
    match file {
        Some(path) => tracing::info!(
            "created user admin; its generated password is in {} (mode 0600)",
            path.display()
        ),
        None => tracing::info!("created user admin with the password from ORCHARD_ADMIN_PASSWORD"),
    }
    Ok(())
}

/// Logs a warning for each client account holding user-management permissions. Such
/// accounts come from databases made before the rule; they keep their permissions (so no
/// deployment loses its only user manager on upgrade), but a manager can act on them only
/// when holding everything they hold, and setting their permissions must drop those.
/// Returns how many there are.
pub fn warn_client_managers(db: &Db) -> Result<usize, String> {
    let users = db.list_users().map_err(|e| e.to_string())?;
    let mut n = 0;
    for u in crate::auth::policy::clients_with_user_management(&users) {
        n += 1;
        tracing::warn!(
            user = %u.username,
            permissions = %u.permissions.names().join(","),
            "a client account holds user-management permissions, which only administrators may hold; remove them (PATCH /api/users/{{uuid}} with its permissions) or recreate it as an administrator"
        );
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Permission;

    /// A database from before the rule, with such a client: start-up finds it and goes on.
    #[test]
    fn a_client_with_user_management_permissions_is_reported_not_fatal() {
        let dir = std::env::temp_dir().join(format!("orchard-boot-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db::open(&dir.join("orchard.redb"), 100).unwrap();
        ensure_admin(&db, &dir, Some("admin-password-1".into())).unwrap();
        assert_eq!(warn_client_managers(&db).unwrap(), 0);
        db.create_user(
            NewUser {
                username: "legacy".into(),
                account_type: AccountType::Client,
                permissions: [Permission::ManageAdminUsers, Permission::ViewAllVms]
                    .into_iter()
                    .collect(),
                password_hash: "h".into(),
            },
            None,
        )
        .unwrap();
        assert_eq!(warn_client_managers(&db).unwrap(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
