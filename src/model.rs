//! Internal domain types shared by `db/`, `auth/` and `api/`.
//!
//! These are not wire types: the REST views live in `api/` and the stored records in `db/`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The two kinds of account. The kind decides which permission manages the account
/// (`MANAGE_CLIENT_USERS` or `MANAGE_ADMIN_USERS`) and which one changes its password.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountType {
    Administrator,
    Client,
}

impl AccountType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Administrator => "administrator",
            Self::Client => "client",
        }
    }

    /// The permission needed to create, modify or delete an account of this kind.
    pub fn manage_permission(self) -> Permission {
        match self {
            Self::Administrator => Permission::ManageAdminUsers,
            Self::Client => Permission::ManageClientUsers,
        }
    }

    /// The permission needed to set another account's password.
    pub fn password_permission(self) -> Permission {
        match self {
            Self::Administrator => Permission::ChangeAdminPassword,
            Self::Client => Permission::ChangeClientPassword,
        }
    }
}

impl FromStr for AccountType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "administrator" => Ok(Self::Administrator),
            "client" => Ok(Self::Client),
            other => Err(format!(
                "unknown account type {other:?} (expected \"administrator\" or \"client\")"
            )),
        }
    }
}

/// One permission. The discriminant is the bit stored in the database: never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Permission {
    ViewAllVms = 0,
    ManageAllVms = 1,
    ManageClientUsers = 2,
    ManageAdminUsers = 3,
    ChangeClientPassword = 4,
    ChangeAdminPassword = 5,
    ManageIsoFiles = 6,
    ManageSystemResources = 7,
    AccessConsole = 8,
    ExecuteCommands = 9,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Self::ViewAllVms,
        Self::ManageAllVms,
        Self::ManageClientUsers,
        Self::ManageAdminUsers,
        Self::ChangeClientPassword,
        Self::ChangeAdminPassword,
        Self::ManageIsoFiles,
        Self::ManageSystemResources,
        Self::AccessConsole,
        Self::ExecuteCommands,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ViewAllVms => "VIEW_ALL_VMS",
            Self::ManageAllVms => "MANAGE_ALL_VMS",
            Self::ManageClientUsers => "MANAGE_CLIENT_USERS",
            Self::ManageAdminUsers => "MANAGE_ADMIN_USERS",
            Self::ChangeClientPassword => "CHANGE_CLIENT_PASSWORD",
            Self::ChangeAdminPassword => "CHANGE_ADMIN_PASSWORD",
            Self::ManageIsoFiles => "MANAGE_ISO_FILES",
            Self::ManageSystemResources => "MANAGE_SYSTEM_RESOURCES",
            Self::AccessConsole => "ACCESS_CONSOLE",
            Self::ExecuteCommands => "EXECUTE_COMMANDS",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown permission {s:?}"))
    }
}

/// A set of permissions, stored as a bit mask.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct PermissionSet(u32);

impl PermissionSet {
    pub const EMPTY: Self = Self(0);

    pub fn all() -> Self {
        Permission::ALL.into_iter().collect()
    }

    /// Rebuilds a set from its stored mask; bits of unknown permissions are dropped.
    pub fn from_bits(bits: u32) -> Self {
        Self(bits & Self::all().0)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Permissions in `self` that are not in `other`.
    pub fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Permissions in both `self` and `other`.
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Permission::name).collect()
    }

    /// Parses permission names; the error names the first unknown one.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        names
            .iter()
            .map(|n| n.as_ref().parse::<Permission>())
            .collect()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |acc, p| acc | p.bit()))
    }
}

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::name))
            .finish()
    }
}

/// A user account as the rest of the daemon sees it. The password hash never leaves `db/`
/// and `auth/` (it has no `Serialize`).
#[derive(Clone, Debug)]
pub struct User {
    pub uuid: Uuid,
    pub username: String,
    pub account_type: AccountType,
    pub permissions: PermissionSet,
    pub disabled: bool,
    pub password_hash: String,
    pub token_version: u64,
    pub created_at: String,
    pub updated_at: String,
}

impl User {
    pub fn has(&self, p: Permission) -> bool {
        self.permissions.contains(p)
    }
}

/// The longest username, in bytes (usernames are ASCII, so also in characters).
pub const MAX_USERNAME_LEN: usize = 64;

/// Usernames: 1–64 characters, ASCII letters, digits, `.`, `_`, `-`, starting with a letter
/// or digit.
pub fn validate_username(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USERNAME_LEN
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err("username must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit".into())
    }
}

/// Passwords: at least 8 and at most 1024 bytes (argon2 cost does not depend on length, but
/// request bodies should stay small).
pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < 8 {
        Err("password must be at least 8 characters".into())
    } else if password.len() > 1024 {
        Err("password must be at most 1024 bytes".into())
    } else {
        Ok(())
    }
}

/// Now as ISO 8601 UTC with a `Z` (the format of every timestamp Orchard emits).
pub fn now_iso() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_round_trip_and_bits_are_stable() {
        for p in Permission::ALL {
            assert_eq!(p.name().parse::<Permission>(), Ok(p));
        }
        assert_eq!(PermissionSet::all().bits(), 0b11_1111_1111);
        assert_eq!(Permission::ExecuteCommands as u8, 9);
    }

    #[test]
    fn set_algebra() {
        let a: PermissionSet = [Permission::ViewAllVms, Permission::AccessConsole]
            .into_iter()
            .collect();
        let b: PermissionSet = [Permission::ViewAllVms].into_iter().collect();
        assert_eq!(b.difference(a), PermissionSet::EMPTY);
        assert_eq!(a.difference(b).names(), vec!["ACCESS_CONSOLE"]);
        assert_eq!(a.intersection(b), b);
        assert!(a.intersection(PermissionSet::EMPTY).is_empty());
        assert!(!a.is_empty());
        assert_eq!(PermissionSet::from_bits(u32::MAX), PermissionSet::all());
        assert!(PermissionSet::parse(&["NOPE"]).is_err());
    }

    #[test]
    fn usernames() {
        assert!(validate_username("admin").is_ok());
        assert!(validate_username("a.b-c_d9").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("-x").is_err());
        assert!(validate_username("x y").is_err());
        assert!(validate_username(&"x".repeat(65)).is_err());
    }

    #[test]
    fn timestamps_end_in_z() {
        assert!(now_iso().ends_with('Z'));
    }
}
