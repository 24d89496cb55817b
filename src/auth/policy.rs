//! Who may do what to which account (contract sections 2 and 7). Pure functions over the
//! actor and the target, so the rules are tested without a server.

use crate::error::{Error, Result};
use crate::model::{AccountType, PermissionSet, User};

/// What a `PATCH /api/users/{uuid}` asks for, after parsing.
pub struct Patch<'a> {
    pub permissions: Option<PermissionSet>,
    pub disabled: Option<bool>,
    pub password: bool,
    pub old_password: Option<&'a str>,
}

/// Whether the handler must verify the old password before applying the patch.
#[derive(Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    None,
    OldPassword,
}

fn manages(actor: &User, kind: AccountType) -> Result<()> {
    if actor.has(kind.manage_permission()) {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "managing {} accounts needs {}",
            kind.as_str(),
            kind.manage_permission()
        )))
    }
}

/// A user grants only permissions they hold.
fn grants_only_held(actor: &User, granted: PermissionSet) -> Result<()> {
    let missing = granted.difference(actor.permissions);
    if missing == PermissionSet::EMPTY {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "you cannot grant permissions you do not hold: {}",
            missing.names().join(", ")
        )))
    }
}

/// Whether `actor` may see `target` in `GET /api/users[/{uuid}]`.
pub fn can_view(actor: &User, target: &User) -> bool {
    actor.uuid == target.uuid || actor.has(target.account_type.manage_permission())
}

pub fn check_view(actor: &User, target: &User) -> Result<()> {
    if can_view(actor, target) {
        Ok(())
    } else {
        manages(actor, target.account_type)
    }
}

pub fn check_create(actor: &User, kind: AccountType, permissions: PermissionSet) -> Result<()> {
    manages(actor, kind)?;
    grants_only_held(actor, permissions)
}

pub fn check_patch(actor: &User, target: &User, patch: &Patch<'_>) -> Result<PasswordCheck> {
    let own = actor.uuid == target.uuid;
    if patch.permissions.is_none() && patch.disabled.is_none() && !patch.password {
        return Err(Error::bad_request(
            "nothing to change: give password, permissions or disabled",
        ));
    }
    if let Some(new) = patch.permissions {
        if own {
            return Err(Error::forbidden("you cannot change your own permissions"));
        }
        manages(actor, target.account_type)?;
        grants_only_held(actor, new.difference(target.permissions))?;
    }
    if patch.disabled.is_some() {
        // Disabling oneself is allowed (it ends one's own sessions); the store refuses it
        // for the last administrator manager.
        manages(actor, target.account_type)?;
    }
    if !patch.password {
        return Ok(PasswordCheck::None);
    }
    if own {
        return match patch.old_password {
            Some(_) => Ok(PasswordCheck::OldPassword),
            None => Err(Error::bad_request(
                "changing your own password needs old_password",
            )),
        };
    }
    let needed = target.account_type.password_permission();
    if actor.has(needed) {
        Ok(PasswordCheck::None)
    } else {
        Err(Error::forbidden(format!(
            "setting the password of {} accounts needs {needed}",
            target.account_type.as_str()
        )))
    }
}

/// Deleting oneself is allowed like any other account of one's kind; the store refuses it
/// for the last administrator manager.
pub fn check_delete(actor: &User, target: &User) -> Result<()> {
    manages(actor, target.account_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Permission as P;
    use uuid::Uuid;

    fn user(kind: AccountType, perms: &[P]) -> User {
        User {
            uuid: Uuid::new_v4(),
            username: "x".into(),
            account_type: kind,
            permissions: perms.iter().copied().collect(),
            disabled: false,
            password_hash: String::new(),
            token_version: 0,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn patch() -> Patch<'static> {
        Patch {
            permissions: None,
            disabled: None,
            password: false,
            old_password: None,
        }
    }

    #[test]
    fn create_needs_the_kind_permission_and_held_grants() {
        let clients_mgr = user(
            AccountType::Administrator,
            &[P::ManageClientUsers, P::ViewAllVms],
        );
        assert!(check_create(&clients_mgr, AccountType::Client, PermissionSet::EMPTY).is_ok());
        assert!(
            check_create(
                &clients_mgr,
                AccountType::Client,
                [P::ViewAllVms].into_iter().collect()
            )
            .is_ok()
        );
        assert!(
            check_create(
                &clients_mgr,
                AccountType::Client,
                [P::ManageAllVms].into_iter().collect()
            )
            .is_err()
        );
        assert!(
            check_create(
                &clients_mgr,
                AccountType::Administrator,
                PermissionSet::EMPTY
            )
            .is_err()
        );
    }

    #[test]
    fn nobody_changes_their_own_permissions() {
        let admin = user(AccountType::Administrator, &P::ALL);
        let p = Patch {
            permissions: Some(PermissionSet::EMPTY),
            ..patch()
        };
        assert!(check_patch(&admin, &admin, &p).is_err());
        let client = user(AccountType::Client, &[]);
        let d = Patch {
            disabled: Some(true),
            ..patch()
        };
        assert!(check_patch(&client, &client, &d).is_err());
        assert!(check_delete(&client, &client).is_err());
    }

    #[test]
    fn password_rules() {
        let client = user(AccountType::Client, &[]);
        let other_client = user(AccountType::Client, &[]);
        let admin_pw = user(AccountType::Administrator, &[P::ChangeClientPassword]);
        let own = Patch {
            password: true,
            old_password: Some("old"),
            ..patch()
        };
        assert_eq!(
            check_patch(&client, &client, &own).unwrap(),
            PasswordCheck::OldPassword
        );
        let own_no_old = Patch {
            password: true,
            ..patch()
        };
        assert!(check_patch(&client, &client, &own_no_old).is_err());
        assert!(check_patch(&client, &other_client, &own_no_old).is_err());
        assert_eq!(
            check_patch(&admin_pw, &other_client, &own_no_old).unwrap(),
            PasswordCheck::None
        );
        let target_admin = user(AccountType::Administrator, &[]);
        assert!(check_patch(&admin_pw, &target_admin, &own_no_old).is_err());
    }

    #[test]
    fn removing_permissions_one_does_not_hold_is_allowed_adding_is_not() {
        let mgr = user(AccountType::Administrator, &[P::ManageClientUsers]);
        let target = user(AccountType::Client, &[P::ViewAllVms]);
        let remove = Patch {
            permissions: Some(PermissionSet::EMPTY),
            ..patch()
        };
        assert!(check_patch(&mgr, &target, &remove).is_ok());
        let add = Patch {
            permissions: Some([P::ViewAllVms, P::ExecuteCommands].into_iter().collect()),
            ..patch()
        };
        assert!(check_patch(&mgr, &target, &add).is_err());
    }
}
