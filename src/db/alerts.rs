//! Alert history: every raise and every clear, newest last, pruned like the audit log.

use redb::ReadableTable;
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
    /// What the alert is about (`disk:{host}:{mount}`, `memory:{host}`, `offline:{host}`,
    /// `boot:{machine}`): one subject has at most one active alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
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
        self.commit(tx)?;
        Ok(())
    }

    /// The alerts whose latest record is a raise, oldest first: the active set to resume
    /// after a restart.
    pub fn raised_alerts(&self) -> DbResult<Vec<AlertRecord>> {
        let tx = self.inner.begin_read()?;
        let table = tx.open_table(ALERTS)?;
        let mut latest: std::collections::HashMap<String, (u64, AlertRecord)> =
            std::collections::HashMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let record: AlertRecord = decode(v.value(), "alert")?;
            latest.insert(record.alert_id.clone(), (k.value(), record));
        }
        let mut raised: Vec<(u64, AlertRecord)> = latest
            .into_values()
            .filter(|(_, r)| r.state == "raised")
            .collect();
        raised.sort_by_key(|(seq, _)| *seq);
        Ok(raised.into_iter().map(|(_, r)| r).collect())
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
