//! Agent hosts (`/api/v1/servers`): a name and the SHA-256 of the host's API key. The key
//! itself is never stored; the hash never leaves `db/` and `auth/`.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::schema::SERVERS;
use super::{AuditEntry, Db, DbError, DbResult, decode, encode};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub server_id: String,
    pub name: String,
    pub key_hash: String,
    pub created_at: String,
}

impl Db {
    pub fn servers(&self) -> DbResult<Vec<ServerRecord>> {
        let tx = self.inner.begin_read()?;
        let table = tx.open_table(SERVERS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value(), "server")?);
        }
        Ok(out)
    }

    /// The server whose key hashes to `key_hash`, if any.
    pub fn server_by_key_hash(&self, key_hash: &str) -> DbResult<Option<ServerRecord>> {
        Ok(self
            .servers()?
            .into_iter()
            .find(|s| crate::auth::apikey::same(&s.key_hash, key_hash)))
    }

    pub fn create_server(&self, s: &ServerRecord, audit: AuditEntry) -> DbResult<()> {
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(SERVERS)?;
            if table.get(s.server_id.as_str())?.is_some() {
                return Err(DbError::Conflict(format!("server {} exists", s.server_id)));
            }
            table.insert(s.server_id.as_str(), encode(s)?.as_slice())?;
        }
        self.append_audit_in(&tx, &audit)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Deletes a server (its key stops working at once) and returns what was stored.
    pub fn delete_server(&self, server_id: &str, audit: AuditEntry) -> DbResult<ServerRecord> {
        let tx = self.begin_write()?;
        let old = {
            let mut table = tx.open_table(SERVERS)?;
            let Some(v) = table.remove(server_id)? else {
                return Err(DbError::NotFound(format!("no server {server_id}")));
            };
            decode::<ServerRecord>(v.value(), "server")?
        };
        self.append_audit_in(&tx, &audit)?;
        self.commit(tx)?;
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_crud_and_key_lookup() {
        let dir = std::env::temp_dir().join(format!("orchard-servers-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db::open(&dir.join("orchard.redb"), 100).unwrap();
        let s = ServerRecord {
            server_id: "s1".into(),
            name: "web-01".into(),
            key_hash: "ab".repeat(32),
            created_at: "t".into(),
        };
        let a = || AuditEntry::new("t", "server");
        db.create_server(&s, a()).unwrap();
        assert!(matches!(
            db.create_server(&s, a()),
            Err(DbError::Conflict(_))
        ));
        assert_eq!(
            db.server_by_key_hash(&"ab".repeat(32)).unwrap(),
            Some(s.clone())
        );
        assert_eq!(db.server_by_key_hash(&"cd".repeat(32)).unwrap(), None);
        assert_eq!(db.delete_server("s1", a()).unwrap(), s);
        assert!(matches!(
            db.delete_server("s1", a()),
            Err(DbError::NotFound(_))
        ));
        assert!(db.servers().unwrap().is_empty());
    }
}
