//! The audit log: an append-only sequence of who did what, pruned to the newest
//! `storage.audit_keep` entries.

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::schema::AUDIT;
use super::{Db, DbResult, decode, encode};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub timestamp: String,
    /// Username of the actor, or `cli` for offline administration.
    pub actor: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The actor's user uuid, when the actor is a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl AuditEntry {
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            timestamp: crate::model::now_iso(),
            actor: actor.into(),
            action: action.into(),
            target: None,
            ip: None,
            detail: None,
            actor_id: None,
            user_agent: None,
        }
    }

    pub fn actor_id(mut self, id: uuid::Uuid) -> Self {
        self.actor_id = Some(id.to_string());
        self
    }

    pub fn user_agent(mut self, ua: Option<&str>) -> Self {
        self.user_agent = ua.map(|u| u.chars().take(256).collect());
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn ip(mut self, ip: Option<std::net::IpAddr>) -> Self {
        self.ip = ip.map(|i| i.to_string());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

impl Db {
    /// Appends one entry in its own transaction.
    pub fn append_audit(&self, entry: &AuditEntry) -> DbResult<()> {
        let tx = self.begin_write()?;
        self.append_audit_in(&tx, entry)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Appends inside a caller's transaction, so the entry commits with the change it records.
    pub(super) fn append_audit_in(
        &self,
        tx: &WriteTransaction,
        entry: &AuditEntry,
    ) -> DbResult<()> {
        let mut table = tx.open_table(AUDIT)?;
        let seq = table.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
        table.insert(seq, encode(entry)?.as_slice())?;
        if seq % 256 == 0 && seq > self.audit_keep {
            let cut = seq - self.audit_keep;
            table.retain_in(..cut, |_, _| false)?;
        }
        Ok(())
    }

    /// The newest `limit` entries, newest first.
    pub fn recent_audit(&self, limit: usize) -> DbResult<Vec<AuditEntry>> {
        let tx = self.inner.begin_read()?;
        let table = tx.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev().take(limit) {
            let (_, v) = row?;
            out.push(decode(v.value(), "audit entry")?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_in_order_and_prunes() {
        let dir = std::env::temp_dir().join(format!("orchard-audit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db::open(&dir.join("orchard.redb"), 10).unwrap();
        for i in 0..300 {
            db.append_audit(&AuditEntry::new("t", format!("a{i}")))
                .unwrap();
        }
        let recent = db.recent_audit(3).unwrap();
        assert_eq!(
            recent.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["a299", "a298", "a297"]
        );
        let tx = db.inner.begin_read().unwrap();
        let kept = super::super::count(&tx, AUDIT).unwrap();
        assert!((10..300).contains(&kept), "kept {kept}");
    }
}
