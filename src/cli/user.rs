//! `orchard user add|passwd|del|list`: offline administration on the database file.
//! The same invariants hold as over REST (unique names, the last admin manager stays).

use std::io::BufRead;

use serde::Serialize;

use super::UserAction;
use crate::auth::password::hash_blocking;
use crate::db::{AuditEntry, Db, NewUser, UserChange};
use crate::model::{AccountType, PermissionSet, User, validate_password, validate_username};

const ACTOR: &str = "cli";

#[derive(Serialize)]
struct Row<'a> {
    uuid: String,
    username: &'a str,
    account_type: &'static str,
    permissions: Vec<&'static str>,
    disabled: bool,
}

impl<'a> From<&'a User> for Row<'a> {
    fn from(u: &'a User) -> Self {
        Self {
            uuid: u.uuid.to_string(),
            username: &u.username,
            account_type: u.account_type.as_str(),
            permissions: u.permissions.names(),
            disabled: u.disabled,
        }
    }
}

/// Runs one action; the error is the one line to print.
pub fn run(db: &Db, action: UserAction) -> Result<(), String> {
    match action {
        UserAction::Add {
            username,
            password_stdin: _,
            account_type,
            permissions,
        } => {
            validate_username(&username)?;
            let kind: AccountType = account_type.parse()?;
            let permissions = if permissions.is_empty() && kind == AccountType::Administrator {
                PermissionSet::all()
            } else {
                PermissionSet::parse(&permissions)?
            };
            crate::auth::policy::check_account_permissions(kind, permissions)
                .map_err(|e| e.to_string())?;
            let password = read_password()?;
            let hash = hash_blocking(&password).map_err(|e| e.to_string())?;
            let entry = AuditEntry::new(ACTOR, "user.create").target(username.clone());
            let user = db
                .create_user(
                    NewUser {
                        username,
                        account_type: kind,
                        permissions,
                        password_hash: hash,
                    },
                    Some(entry),
                )
                .map_err(|e| e.to_string())?;
            eprintln!("created user {} ({})", user.username, user.uuid);
            Ok(())
        }
        UserAction::Passwd {
            username,
            password_stdin: _,
        } => {
            let user = find(db, &username)?;
            let password = read_password()?;
            let hash = hash_blocking(&password).map_err(|e| e.to_string())?;
            let entry = AuditEntry::new(ACTOR, "user.update")
                .target(username.clone())
                .detail("password");
            db.update_user(
                user.uuid,
                UserChange {
                    password_hash: Some(hash),
                    ..Default::default()
                },
                Some(entry),
            )
            .map_err(|e| e.to_string())?;
            eprintln!("password of {username} changed; its tokens are revoked");
            Ok(())
        }
        UserAction::Del { username } => {
            let user = find(db, &username)?;
            let entry = AuditEntry::new(ACTOR, "user.delete").target(username.clone());
            db.delete_user(user.uuid, Some(entry))
                .map_err(|e| e.to_string())?;
            eprintln!("deleted user {username}");
            Ok(())
        }
        UserAction::List { json } => {
            let users = db.list_users().map_err(|e| e.to_string())?;
            let mut out = String::new();
            if json {
                let rows: Vec<Row<'_>> = users.iter().map(Row::from).collect();
                out = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
                out.push('\n');
            } else {
                for u in &users {
                    out.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\n",
                        u.uuid,
                        u.username,
                        u.account_type.as_str(),
                        if u.disabled { "disabled" } else { "enabled" },
                        u.permissions.names().join(",")
                    ));
                }
            }
            use std::io::Write;
            std::io::stdout()
                .write_all(out.as_bytes())
                .map_err(|e| format!("cannot write to standard output: {e}"))
        }
    }
}

fn find(db: &Db, username: &str) -> Result<User, String> {
    db.user_by_name(username)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no user named {username:?}"))
}

/// One line from standard input, without its line ending.
fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    validate_password(&password)?;
    Ok(password)
}
