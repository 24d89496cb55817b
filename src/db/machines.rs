//! Machine ownership, client assignment and users' stored subscriptions, keyed by machine
//! uuid. Machines themselves live in their backends; these tables only say who relates to
//! which machine.

use std::collections::{BTreeSet, HashMap};

use redb::ReadableTable;
use uuid::Uuid;

use super::schema::{MACHINE_CLIENTS, MACHINE_OWNERS, SUBSCRIPTIONS};
use super::{AuditEntry, Db, DbResult};

/// Who relates to one machine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Relations {
    pub owner: Option<Uuid>,
    pub clients: BTreeSet<Uuid>,
}

impl Db {
    /// Every machine's owner and clients (loaded once at start).
    pub fn all_relations(&self) -> DbResult<HashMap<Uuid, Relations>> {
        let tx = self.inner.begin_read()?;
        let mut out: HashMap<Uuid, Relations> = HashMap::new();
        for row in tx.open_table(MACHINE_OWNERS)?.iter()? {
            let (m, u) = row?;
            out.entry(Uuid::from_u128(m.value())).or_default().owner =
                Some(Uuid::from_u128(u.value()));
        }
        for row in tx.open_table(MACHINE_CLIENTS)?.iter()? {
            let (k, _) = row?;
            let (m, u) = k.value();
            out.entry(Uuid::from_u128(m))
                .or_default()
                .clients
                .insert(Uuid::from_u128(u));
        }
        Ok(out)
    }

    pub fn set_owner(
        &self,
        machine: Uuid,
        owner: Option<Uuid>,
        audit: Option<AuditEntry>,
    ) -> DbResult<()> {
        let tx = self.begin_write()?;
        {
            let mut owners = tx.open_table(MACHINE_OWNERS)?;
            match owner {
                Some(u) => {
                    owners.insert(machine.as_u128(), u.as_u128())?;
                }
                None => {
                    owners.remove(machine.as_u128())?;
                }
            }
        }
        if let Some(entry) = audit {
            self.append_audit_in(&tx, &entry)?;
        }
        self.commit(tx)?;
        Ok(())
    }

    /// Adds (`assigned = true`) or removes a client; returns whether anything changed.
    pub fn set_client(
        &self,
        machine: Uuid,
        user: Uuid,
        assigned: bool,
        audit: Option<AuditEntry>,
    ) -> DbResult<bool> {
        let tx = self.begin_write()?;
        let changed = {
            let mut clients = tx.open_table(MACHINE_CLIENTS)?;
            let key = (machine.as_u128(), user.as_u128());
            if assigned {
                clients.insert(key, ())?.is_none()
            } else {
                clients.remove(key)?.is_some()
            }
        };
        if let Some(entry) = audit {
            self.append_audit_in(&tx, &entry)?;
        }
        self.commit(tx)?;
        Ok(changed)
    }

    /// Forgets a deleted machine: owner, clients and every user's subscription to it.
    pub fn forget_machine(&self, machine: Uuid) -> DbResult<()> {
        let tx = self.begin_write()?;
        {
            let m = machine.as_u128();
            tx.open_table(MACHINE_OWNERS)?.remove(m)?;
            tx.open_table(MACHINE_CLIENTS)?
                .retain_in((m, 0)..=(m, u128::MAX), |_, _| false)?;
            tx.open_table(SUBSCRIPTIONS)?.retain(|(_, mm), _| mm != m)?;
        }
        self.commit(tx)?;
        Ok(())
    }

    /// The machines `user` subscribed to.
    pub fn subscriptions(&self, user: Uuid) -> DbResult<Vec<Uuid>> {
        let tx = self.inner.begin_read()?;
        let table = tx.open_table(SUBSCRIPTIONS)?;
        let u = user.as_u128();
        let mut out = Vec::new();
        for row in table.range((u, 0)..=(u, u128::MAX))? {
            let (k, _) = row?;
            out.push(Uuid::from_u128(k.value().1));
        }
        Ok(out)
    }

    /// Adds or removes a subscription; returns whether anything changed.
    pub fn set_subscription(&self, user: Uuid, machine: Uuid, subscribed: bool) -> DbResult<bool> {
        let tx = self.begin_write()?;
        let changed = {
            let mut table = tx.open_table(SUBSCRIPTIONS)?;
            let key = (user.as_u128(), machine.as_u128());
            if subscribed {
                table.insert(key, ())?.is_none()
            } else {
                table.remove(key)?.is_some()
            }
        };
        self.commit(tx)?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_and_subscriptions_round_trip_and_forget() {
        let dir = std::env::temp_dir().join(format!("orchard-machines-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db::open(&dir.join("orchard.redb"), 100).unwrap();
        let (m1, m2, u1, u2) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        db.set_owner(m1, Some(u1), None).unwrap();
        assert!(db.set_client(m1, u2, true, None).unwrap());
        assert!(!db.set_client(m1, u2, true, None).unwrap());
        db.set_client(m2, u2, true, None).unwrap();
        let all = db.all_relations().unwrap();
        assert_eq!(all[&m1].owner, Some(u1));
        assert!(all[&m1].clients.contains(&u2));
        assert!(db.set_subscription(u2, m1, true).unwrap());
        db.set_subscription(u2, m2, true).unwrap();
        db.set_subscription(u1, m1, true).unwrap();
        assert_eq!(db.subscriptions(u2).unwrap().len(), 2);
        db.forget_machine(m1).unwrap();
        let all = db.all_relations().unwrap();
        assert!(!all.contains_key(&m1));
        assert_eq!(db.subscriptions(u2).unwrap(), vec![m2]);
        assert!(db.subscriptions(u1).unwrap().is_empty());
    }
}
