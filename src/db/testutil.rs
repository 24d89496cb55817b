//! Helpers of the database tests: populated files, damage, crash images.

use std::path::{Path, PathBuf};

use super::{Db, NewUser};
use crate::model::{AccountType, PermissionSet};

/// A fresh path `…/orchard.redb` in a new temporary directory.
pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "orchard-db-{}-{}-{name}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("orchard.redb")
}

/// `user-00` … : usernames of [`add_users`].
pub fn user_name(i: usize) -> String {
    format!("user-{i:02}")
}

/// Creates `n` users (and their audit entries) in `db`.
pub fn add_users(db: &Db, n: usize) {
    for i in 0..n {
        let name = user_name(i);
        db.create_user(
            NewUser {
                username: name.clone(),
                account_type: if i == 0 {
                    AccountType::Administrator
                } else {
                    AccountType::Client
                },
                permissions: if i == 0 {
                    PermissionSet::all()
                } else {
                    PermissionSet::EMPTY
                },
                // About the size of an argon2id PHC string.
                password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${name}${}", "x".repeat(80)),
            },
            Some(super::AuditEntry::new("test", "user.create").target(name)),
        )
        .unwrap();
    }
}

/// A database of `n` users, closed cleanly.
pub fn populated(name: &str, n: usize) -> PathBuf {
    let path = temp_path(name);
    let db = Db::open(&path, 1000).unwrap();
    add_users(&db, n);
    drop(db);
    path
}

/// Flips 64 bytes at every copy of `username`'s record in the file (the live page and any
/// stale copy in a free page); returns how many it found.
pub fn damage_record(path: &Path, username: &str) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let needle = format!("\"username\":\"{username}\"");
    let mut found = 0;
    let mut at = 0;
    while let Some(i) = find(&bytes[at..], needle.as_bytes()) {
        let start = at + i;
        let end = (start + 64).min(bytes.len());
        for b in &mut bytes[start..end] {
            *b ^= 0xff;
        }
        found += 1;
        at = start + 64;
    }
    std::fs::write(path, &bytes).unwrap();
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Files beside `path` whose names start with its name and `.{what}`.
pub fn copies(path: &Path, what: &str) -> Vec<PathBuf> {
    let prefix = format!("{}.{what}", path.file_name().unwrap().to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .collect();
    found.sort();
    found
}

/// The file as a crash leaves it: `n` users committed (durably), never closed. Written to a
/// new path while the database that wrote it is still open.
pub fn crash_image(name: &str, n: usize) -> PathBuf {
    let live = temp_path(&format!("{name}-live"));
    let db = Db::open(&live, 1000).unwrap();
    add_users(&db, n);
    let image = temp_path(name);
    std::fs::copy(&live, &image).unwrap();
    drop(db);
    image
}
