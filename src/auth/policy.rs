//! Who may do what to which account (contract sections 2 and 7). Pure functions over the
//! actor and the target, so the rules are tested without a server.
//!
//! Two rules keep a manager from climbing above their own permissions (issue 21):
//!
//! * An actor may set the password of, disable or enable, delete, or change the permissions
//!   of another user only if the actor holds every permission that user holds (besides the
//!   manage or password permission of the user's account type). Otherwise a manager could
//!   take over an account that holds more than they do.
//! * A client account never holds a user-management permission ([`USER_MANAGEMENT`]): those
//!   are refused (400) when a client is created or its permissions are set.

use crate::error::{Error, Result};
use crate::model::{AccountType, Permission, PermissionSet, User};

/// The permissions that act on accounts. Only administrators may hold them.
pub const USER_MANAGEMENT: [Permission; 4] = [
    Permission::ManageClientUsers,
    Permission::ManageAdminUsers,
    Permission::ChangeClientPassword,
    Permission::ChangeAdminPassword,
];

fn user_management() -> PermissionSet {
    USER_MANAGEMENT.into_iter().collect()
}

/// A client account cannot hold user-management permissions (400 otherwise).
pub fn check_account_permissions(kind: AccountType, permissions: PermissionSet) -> Result<()> {
    let refused = permissions.intersection(user_management());
    if kind == AccountType::Client && !refused.is_empty() {
        return Err(Error::bad_request(format!(
            "a client account cannot hold user-management permissions: {}",
            refused.names().join(", ")
        )));
    }
    Ok(())
}

/// The client accounts that hold user-management permissions anyway (granted before the
/// rule existed); start-up warns about them.
pub fn clients_with_user_management(users: &[User]) -> impl Iterator<Item = &User> {
    users.iter().filter(|u| {
        u.account_type == AccountType::Client
            && !u.permissions.intersection(user_management()).is_empty()
    })
}

/// The actor holds every permission the target holds.
fn outranks(actor: &User, target: &User, action: &str) -> Result<()> {
    let missing = target.permissions.difference(actor.permissions);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "you cannot {action} a user who holds permissions you do not hold: {}",
            missing.names().join(", ")
        )))
    }
}

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
    check_account_permissions(kind, permissions)?;
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
        check_account_permissions(target.account_type, new)?;
        outranks(actor, target, "change the permissions of")?;
        grants_only_held(actor, new.difference(target.permissions))?;
    }
    if patch.disabled.is_some() {
        // Disabling oneself is allowed (it ends one's own sessions); the store refuses it
        // for the last administrator manager.
        manages(actor, target.account_type)?;
        outranks(actor, target, "disable or enable")?;
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
    if !actor.has(needed) {
        return Err(Error::forbidden(format!(
            "setting the password of {} accounts needs {needed}",
            target.account_type.as_str()
        )));
    }
    outranks(actor, target, "set the password of")?;
    Ok(PasswordCheck::None)
}

/// Deleting oneself is allowed like any other account of one's kind; the store refuses it
/// for the last administrator manager.
pub fn check_delete(actor: &User, target: &User) -> Result<()> {
    manages(actor, target.account_type)?;
    outranks(actor, target, "delete")
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
    fn changing_permissions_needs_every_permission_the_target_holds() {
        let mgr = user(AccountType::Administrator, &[P::ManageClientUsers]);
        let target = user(AccountType::Client, &[P::ViewAllVms]);
        let remove = Patch {
            permissions: Some(PermissionSet::EMPTY),
            ..patch()
        };
        // Even removing: the target holds VIEW_ALL_VMS, which the manager does not.
        assert!(check_patch(&mgr, &target, &remove).is_err());
        let viewer_mgr = user(
            AccountType::Administrator,
            &[P::ManageClientUsers, P::ViewAllVms],
        );
        assert!(check_patch(&viewer_mgr, &target, &remove).is_ok());
        let add = Patch {
            permissions: Some([P::ViewAllVms, P::ExecuteCommands].into_iter().collect()),
            ..patch()
        };
        assert!(check_patch(&viewer_mgr, &target, &add).is_err());
    }

    /// Issue 21: a helpdesk administrator (clients' manager and password setter) took over a
    /// client holding more than it did, then used that client's permissions.
    #[test]
    fn nobody_acts_on_a_user_who_holds_more_than_they_do() {
        let helpdesk = user(
            AccountType::Administrator,
            &[P::ManageClientUsers, P::ChangeClientPassword],
        );
        let ops = user(AccountType::Client, &[P::ViewAllVms, P::ExecuteCommands]);
        let password = Patch {
            password: true,
            ..patch()
        };
        let disable = Patch {
            disabled: Some(true),
            ..patch()
        };
        let enable = Patch {
            disabled: Some(false),
            ..patch()
        };
        let strip = Patch {
            permissions: Some(PermissionSet::EMPTY),
            ..patch()
        };
        for p in [&password, &disable, &enable, &strip] {
            let e = check_patch(&helpdesk, &ops, p).unwrap_err();
            assert!(matches!(e, Error::Forbidden(_)), "{e}");
            assert!(e.to_string().contains("EXECUTE_COMMANDS"), "{e}");
        }
        assert!(matches!(
            check_delete(&helpdesk, &ops),
            Err(Error::Forbidden(_))
        ));
        // A plain client is fair game, and an actor holding everything ops holds may act.
        let plain = user(AccountType::Client, &[]);
        for p in [&password, &disable, &enable, &strip] {
            assert!(check_patch(&helpdesk, &plain, p).is_ok());
        }
        assert!(check_delete(&helpdesk, &plain).is_ok());
        let senior = user(
            AccountType::Administrator,
            &[
                P::ManageClientUsers,
                P::ChangeClientPassword,
                P::ViewAllVms,
                P::ExecuteCommands,
            ],
        );
        for p in [&password, &disable, &strip] {
            assert!(check_patch(&senior, &ops, p).is_ok());
        }
        assert!(check_delete(&senior, &ops).is_ok());
        // Oneself: one always holds one's own permissions.
        let own = Patch {
            password: true,
            old_password: Some("old"),
            ..patch()
        };
        assert_eq!(
            check_patch(&ops, &ops, &own).unwrap(),
            PasswordCheck::OldPassword
        );
    }

    #[test]
    fn a_client_never_holds_user_management_permissions() {
        let admin = user(AccountType::Administrator, &P::ALL);
        for p in USER_MANAGEMENT {
            let perms: PermissionSet = [p, P::ViewAllVms].into_iter().collect();
            let e = check_create(&admin, AccountType::Client, perms).unwrap_err();
            assert!(matches!(e, Error::BadRequest(_)), "{e}");
            assert!(e.to_string().contains(p.name()), "{e}");
            assert!(check_create(&admin, AccountType::Administrator, perms).is_ok());
            let client = user(AccountType::Client, &[]);
            let set = Patch {
                permissions: Some(perms),
                ..patch()
            };
            let e = check_patch(&admin, &client, &set).unwrap_err();
            assert!(matches!(e, Error::BadRequest(_)), "{e}");
        }
        // Every other permission is fine for a client.
        let rest = PermissionSet::all().difference(USER_MANAGEMENT.into_iter().collect());
        assert!(check_create(&admin, AccountType::Client, rest).is_ok());
    }

    /// A database from before the rule may hold such a client: nothing panics, start-up
    /// finds it, only an actor holding all it holds acts on it, and its permissions can be
    /// set only without the user-management ones.
    #[test]
    fn an_existing_client_with_user_management_permissions() {
        let legacy = user(
            AccountType::Client,
            &[P::ManageAdminUsers, P::ChangeAdminPassword, P::ViewAllVms],
        );
        let plain = user(AccountType::Client, &[P::ViewAllVms]);
        let admin = user(AccountType::Administrator, &P::ALL);
        let users = [legacy.clone(), plain, admin.clone()];
        let found: Vec<_> = clients_with_user_management(&users).collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].uuid, legacy.uuid);

        let helpdesk = user(
            AccountType::Administrator,
            &[P::ManageClientUsers, P::ChangeClientPassword],
        );
        let password = Patch {
            password: true,
            ..patch()
        };
        assert!(check_patch(&helpdesk, &legacy, &password).is_err());
        assert!(check_patch(&admin, &legacy, &password).is_ok());
        let keep = Patch {
            permissions: Some(legacy.permissions),
            ..patch()
        };
        assert!(matches!(
            check_patch(&admin, &legacy, &keep),
            Err(Error::BadRequest(_))
        ));
        let strip = Patch {
            permissions: Some([P::ViewAllVms].into_iter().collect()),
            ..patch()
        };
        assert!(check_patch(&admin, &legacy, &strip).is_ok());
    }
}
