import { login } from '../api.js';
import { h, setChildren } from '../dom.js';

export function loginPage(app, { onLogin, message }) {
  app.classList.remove('boot');
  const err = h('p.form-error', { role: 'alert', id: 'login-error', hidden: !message }, message || '');
  if (message) err.classList.add('form-note');
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button.btn.btn-primary.btn-block', { type: 'submit' }, 'Sign in');
  const form = h('form.login-card', { 'aria-labelledby': 'login-title' },
    h('div.login-brand', h('img', { src: '/favicon.svg', alt: '', width: 40, height: 40 }),
      h('div', h('h1#login-title', 'Orchard'), h('p.muted', `Host console · ${location.hostname}`))),
    err,
    h('div.field', h('label', { for: 'username' }, 'User name'), user),
    h('div.field', h('label', { for: 'password' }, 'Password'), pass),
    submit);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    err.hidden = true;
    err.classList.remove('form-note');
    try {
      await login(user.value.trim(), pass.value);
      onLogin();
    } catch (e) {
      err.hidden = false;
      err.textContent = e.status === 401 ? 'Wrong user name or password.'
        : e.status === 429 ? 'Too many failed attempts. Wait a moment and try again.'
          : e.message;
      submit.disabled = false;
      submit.textContent = 'Sign in';
      pass.select();
    }
  });
  setChildren(app, h('div.login-page', form, h('p.login-foot.muted', 'Orchard · virtual machines and containers on this host')));
  user.focus();
  return null;
}
