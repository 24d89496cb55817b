//! Clusters: named groups of machines (contract 4.4). Only membership and add-ons are stored;
//! nodes and phase are derived from the machines' state elsewhere.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::schema::CLUSTERS;
use super::{AuditEntry, Db, DbError, DbResult, decode, encode};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    /// Member machine uuids, in the order given.
    pub machines: Vec<String>,
    pub addons: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Db {
    pub fn clusters(&self) -> DbResult<Vec<ClusterRecord>> {
        let tx = self.inner.begin_read()?;
        let table = tx.open_table(CLUSTERS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value(), "cluster")?);
        }
        Ok(out)
    }

    /// Inserts a new cluster; a taken name is a conflict.
    pub fn create_cluster(&self, c: &ClusterRecord, audit: AuditEntry) -> DbResult<()> {
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(CLUSTERS)?;
            if table.get(c.name.as_str())?.is_some() {
                return Err(DbError::Conflict(format!("cluster {:?} exists", c.name)));
            }
            table.insert(c.name.as_str(), encode(c)?.as_slice())?;
        }
        self.append_audit_in(&tx, &audit)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Replaces an existing cluster.
    pub fn update_cluster(&self, c: &ClusterRecord, audit: Option<AuditEntry>) -> DbResult<()> {
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(CLUSTERS)?;
            if table.get(c.name.as_str())?.is_none() {
                return Err(DbError::NotFound(format!("no cluster {:?}", c.name)));
            }
            table.insert(c.name.as_str(), encode(c)?.as_slice())?;
        }
        if let Some(a) = audit {
            self.append_audit_in(&tx, &a)?;
        }
        self.commit(tx)?;
        Ok(())
    }

    pub fn delete_cluster(&self, name: &str, audit: AuditEntry) -> DbResult<()> {
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(CLUSTERS)?;
            if table.remove(name)?.is_none() {
                return Err(DbError::NotFound(format!("no cluster {name:?}")));
            }
        }
        self.append_audit_in(&tx, &audit)?;
        self.commit(tx)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_crud() {
        let dir = std::env::temp_dir().join(format!("orchard-clusters-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db::open(&dir.join("orchard.redb"), 100).unwrap();
        let c = ClusterRecord {
            name: "prod".into(),
            machines: vec!["m1".into()],
            addons: vec![],
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        let a = || AuditEntry::new("t", "cluster");
        db.create_cluster(&c, a()).unwrap();
        assert!(matches!(
            db.create_cluster(&c, a()),
            Err(DbError::Conflict(_))
        ));
        let mut c2 = c.clone();
        c2.addons = vec!["dns".into()];
        db.update_cluster(&c2, None).unwrap();
        assert_eq!(db.clusters().unwrap(), vec![c2]);
        db.delete_cluster("prod", a()).unwrap();
        assert!(matches!(
            db.delete_cluster("prod", a()),
            Err(DbError::NotFound(_))
        ));
        assert!(db.clusters().unwrap().is_empty());
    }
}
