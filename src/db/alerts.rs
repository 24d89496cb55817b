//! Alert history: every raise and every clear, newest last, pruned like the audit log.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::schema::ALERTS;
use super::{Db, DbResult, decode, encode};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub alert_id: String,
    /// `raised` or `cleared`.
    pub state: String,
    pub severity: String,
    pub title: String,
    pub message: String,
    pub category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_uuid: Option<String>,
    pub timestamp: String,
}

impl Db {
    pub fn append_alert(&self, record: &AlertRecord) -> DbResult<()> {
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(ALERTS)?;
            let seq = table.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            table.insert(seq, encode(record)?.as_slice())?;
            if seq % 256 == 0 && seq > self.audit_keep {
                let cut = seq - self.audit_keep;
                table.retain_in(..cut, |_, _| false)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The newest `limit` records, newest first.
    pub fn recent_alerts(&self, limit: usize) -> DbResult<Vec<AlertRecord>> {
        let tx = self.inner.begin_read()?;
        let table = tx.open_table(ALERTS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev().take(limit) {
            let (_, v) = row?;
            out.push(decode(v.value(), "alert")?);
        }
        Ok(out)
    }
}
