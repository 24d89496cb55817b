//! First start: the `admin` account.

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
