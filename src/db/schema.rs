//! Table definitions and the ordered list of migrations.
//!
//! The schema version is the number of migrations applied; it lives in `meta`. A migration
//! runs in its own write transaction together with the version bump, so a crash leaves the
//! database at one version or the next, never in between. Append migrations; never edit one
//! that has shipped.

use redb::{TableDefinition, WriteTransaction};

/// `"schema_version"` → number of migrations applied.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// user uuid → JSON [`super::users::UserRecord`].
pub const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");
/// username → user uuid (unique index).
pub const USERNAMES: TableDefinition<&str, u128> = TableDefinition::new("usernames");
/// user uuid → permission bit mask ([`crate::model::PermissionSet::bits`]).
pub const PERMISSIONS: TableDefinition<u128, u32> = TableDefinition::new("permissions");
/// (user uuid, machine uuid) → () — a user's stored machine subscriptions.
pub const SUBSCRIPTIONS: TableDefinition<(u128, u128), ()> = TableDefinition::new("subscriptions");
/// machine uuid → owner user uuid.
pub const MACHINE_OWNERS: TableDefinition<u128, u128> = TableDefinition::new("machine_owners");
/// (machine uuid, user uuid) → () — clients assigned to a machine.
pub const MACHINE_CLIENTS: TableDefinition<(u128, u128), ()> =
    TableDefinition::new("machine_clients");
/// cluster name → JSON cluster record.
pub const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
/// server id → JSON server record (API key stored hashed).
pub const SERVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("servers");
/// sequence number → JSON [`super::audit::AuditEntry`].
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// sequence number → JSON [`super::alerts::AlertRecord`] (raise and clear history).
pub const ALERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("alerts");

pub const SCHEMA_VERSION_KEY: &str = "schema_version";

pub type Migration = fn(&WriteTransaction) -> Result<(), redb::Error>;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[Migration] = &[v1_initial_tables, v2_alerts];

/// The schema version this build writes.
pub fn current_version() -> u64 {
    MIGRATIONS.len() as u64
}

fn v1_initial_tables(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(USERS)?;
    tx.open_table(USERNAMES)?;
    tx.open_table(PERMISSIONS)?;
    tx.open_table(SUBSCRIPTIONS)?;
    tx.open_table(MACHINE_OWNERS)?;
    tx.open_table(MACHINE_CLIENTS)?;
    tx.open_table(CLUSTERS)?;
    tx.open_table(SERVERS)?;
    tx.open_table(AUDIT)?;
    Ok(())
}

fn v2_alerts(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(ALERTS)?;
    Ok(())
}
