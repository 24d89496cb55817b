// Users and permissions (MANAGE_CLIENT_USERS / MANAGE_ADMIN_USERS).

import { api, session } from '../api.js';
import { h, icon, setChildren, badge, when, emptyState, formDialog, confirmDialog, toast } from '../dom.js';
import { pageHeader } from './common.js';

export const PERMISSIONS = [
  ['VIEW_ALL_VMS', 'See every machine and the host'],
  ['MANAGE_ALL_VMS', 'Create and control every machine'],
  ['ACCESS_CONSOLE', 'Open machine consoles'],
  ['MANAGE_CLIENT_USERS', 'Manage client accounts (administrators only)'],
  ['MANAGE_ADMIN_USERS', 'Manage administrator accounts (administrators only)'],
  ['CHANGE_CLIENT_PASSWORD', 'Set client passwords (administrators only)'],
  ['CHANGE_ADMIN_PASSWORD', 'Set administrator passwords (administrators only)'],
  ['MANAGE_ISO_FILES', 'Manage ISO files'],
  ['MANAGE_SYSTEM_RESOURCES', 'Manage system resources and agents'],
  ['EXECUTE_COMMANDS', 'Run commands on hosts'],
];

// Only administrators may hold these; the server refuses them for a client account (400).
const USER_MANAGEMENT = ['MANAGE_CLIENT_USERS', 'MANAGE_ADMIN_USERS', 'CHANGE_CLIENT_PASSWORD', 'CHANGE_ADMIN_PASSWORD'];

// The permissions this session may grant; for a client account, without user management.
const permOptions = (accountType) => PERMISSIONS
  .filter(([p]) => session.can(p) && !(accountType === 'client' && USER_MANAGEMENT.includes(p)))
  .map(([p, d]) => ({ value: p, label: `${p} — ${d}` }));

export function usersPage(main) {
  const box = h('section.card');
  const add = h('button.btn.btn-primary', { type: 'button', id: 'new-user' }, icon('plus'), h('span', 'New user'));
  main.append(pageHeader('Users', 'Accounts, account types and permissions', add), box);
  add.addEventListener('click', async () => {
    const types = [];
    if (session.can('MANAGE_CLIENT_USERS')) types.push({ value: 'client', label: 'Client' });
    if (session.can('MANAGE_ADMIN_USERS')) types.push({ value: 'administrator', label: 'Administrator' });
    const u = await formDialog({
      title: 'New user', submit: 'Create',
      fields: [
        { name: 'username', label: 'User name', required: true, autocomplete: 'off' },
        { name: 'password', label: 'Password', type: 'password', required: true, autocomplete: 'new-password', help: 'At least 8 characters' },
        { name: 'account_type', label: 'Account type', type: 'select', options: types, value: 'client' },
        { name: 'permissions', label: 'Permissions', type: 'checks', options: permOptions(), value: ['ACCESS_CONSOLE'].filter((p) => session.can(p)) },
      ],
      onSubmit: (v) => api('POST', '/api/users', { username: v.username.trim(), password: v.password, account_type: v.account_type, permissions: v.permissions }),
    });
    if (u && u.uuid) { toast(`User ${u.username} created.`, 'ok'); load(); }
  });

  function edit(u) {
    formDialog({
      title: `Edit ${u.username}`,
      fields: [
        { name: 'permissions', label: 'Permissions', type: 'checks', options: permOptions(u.account_type), value: u.permissions.filter((p) => u.account_type !== 'client' || !USER_MANAGEMENT.includes(p)) },
        { name: 'disabled', label: 'State', type: 'select', value: String(u.disabled), options: [{ value: 'false', label: 'Enabled' }, { value: 'true', label: 'Disabled (cannot sign in)' }] },
        { name: 'password', label: 'New password', type: 'password', autocomplete: 'new-password', help: 'Leave empty to keep the current one' },
      ],
      onSubmit: (v) => {
        const body = { permissions: v.permissions, disabled: v.disabled === 'true' };
        if (v.password) body.password = v.password;
        return api('PATCH', `/api/users/${u.uuid}`, body);
      },
    }).then((r) => { if (r) load(); });
  }

  async function load() {
    let list;
    try { list = await api('GET', '/api/users'); } catch (e) { setChildren(box, emptyState('Could not load users', e.message)); return; }
    if (!list.length) { setChildren(box, emptyState('No users', null)); return; }
    setChildren(box, h('div.table-wrap', h('table.table',
      h('thead', h('tr', h('th', 'User'), h('th', 'Type'), h('th', 'Permissions'), h('th', 'State'), h('th', 'Created'), h('th', ''))),
      h('tbody', list.map((u) => {
        const del = h('button.icon-btn', { type: 'button', 'aria-label': `Delete ${u.username}`, title: 'Delete' }, icon('trash'));
        del.addEventListener('click', async () => {
          if (await confirmDialog(`Delete ${u.username}?`, 'Their sessions end at once. Machines they own keep running.')) {
            api('DELETE', `/api/users/${u.uuid}`).then(load).catch((e) => toast(e.message, 'error'));
          }
        });
        const ed = h('button.icon-btn', { type: 'button', 'aria-label': `Edit ${u.username}`, title: 'Edit' }, icon('edit'));
        ed.addEventListener('click', () => edit(u));
        return h('tr', { 'data-user': u.username },
          h('td', h('span.user-cell', h('span.avatar.avatar-sm', u.username.slice(0, 1).toUpperCase()), h('strong', u.username), u.uuid === session.user.uuid ? h('span.muted.small', '(you)') : null)),
          h('td', u.account_type === 'administrator' ? 'Administrator' : 'Client'),
          h('td', h('div.tags', u.permissions.length ? u.permissions.map((p) => h('span.tag.tag-perm', p)) : h('span.muted', 'none'))),
          h('td', u.disabled ? badge('stopped', 'disabled') : badge('running', 'enabled')),
          h('td.small.nowrap', { title: u.created_at }, when(u.created_at)),
          h('td.row-end', ed, del));
      })))));
  }
  load();
  return null;
}
