// Small DOM helpers, formatters, toasts, dialogs and sparklines. No framework.

/** h('div.card#id', {attrs}, ...children): builds an element. */
export function h(tag, attrs, ...children) {
  const m = /^([a-z0-9]+)?((?:[.#][\w-]+)*)$/i.exec(tag);
  const el = document.createElement((m && m[1]) || 'div');
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === '.') el.classList.add(part.slice(1));
      else el.id = part.slice(1);
    }
  }
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function setChildren(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
const ICONS = {
  overview: 'M3 13h8V3H3v10zm0 8h8v-6H3v6zm10 0h8V11h-8v10zm0-18v6h8V3h-8z',
  machines: 'M4 5h16v10H4zM2 19h20v2H2zM8 15h8v4H8z',
  clusters: 'M12 2l9 5v10l-9 5-9-5V7l9-5zm0 2.3L5 8.2v7.6l7 3.9 7-3.9V8.2l-7-3.9z',
  alerts: 'M12 2a7 7 0 0 0-7 7v4l-2 3v1h18v-1l-2-3V9a7 7 0 0 0-7-7zm0 20a3 3 0 0 0 3-3H9a3 3 0 0 0 3 3z',
  activity: 'M3 12h4l3-8 4 16 3-8h4',
  users: 'M16 11a4 4 0 1 0-4-4 4 4 0 0 0 4 4zM8 12a3 3 0 1 0-3-3 3 3 0 0 0 3 3zm8 2c-3 0-8 1.5-8 4.5V21h16v-2.5C24 15.5 19 14 16 14zM8 14c-.4 0-.8 0-1.3.1A5 5 0 0 1 9 18.5V21H0v-2.5C0 16 5 14 8 14z',
  backends: 'M4 4h16v6H4zm0 10h16v6H4zm3-7h2v1H7zm0 10h2v1H7z',
  servers: 'M3 3h18v8H3zm0 10h18v8H3zm3-7v2h2V6zm0 10v2h2v-2z',
  star: 'M12 2l3.1 6.3 6.9 1-5 4.9 1.2 6.8L12 17.8 5.8 21l1.2-6.8-5-4.9 6.9-1z',
  play: 'M7 4v16l13-8z',
  stop: 'M6 6h12v12H6z',
  restart: 'M12 4a8 8 0 1 0 8 8h-2a6 6 0 1 1-1.8-4.3L13 11h7V4l-2.4 2.4A8 8 0 0 0 12 4z',
  pause: 'M6 5h4v14H6zm8 0h4v14h-4z',
  plus: 'M11 5h2v6h6v2h-6v6h-2v-6H5v-2h6z',
  trash: 'M6 7h12l-1 14H7zm3-4h6l1 2h4v2H4V5h4z',
  edit: 'M4 17.2V20h2.8l8.3-8.3-2.8-2.8zm14.7-9.5a1 1 0 0 0 0-1.4l-1.6-1.6a1 1 0 0 0-1.4 0l-1.3 1.3 2.8 2.8z',
  menu: 'M3 6h18v2H3zm0 5h18v2H3zm0 5h18v2H3z',
  moon: 'M21 12.8A9 9 0 1 1 11.2 3a7 7 0 0 0 9.8 9.8z',
  sun: 'M12 7a5 5 0 1 0 5 5 5 5 0 0 0-5-5zm0-5h0v3m0 14v3M4.2 4.2l2.1 2.1m11.4 11.4 2.1 2.1M2 12h3m14 0h3M4.2 19.8l2.1-2.1M17.7 6.3l2.1-2.1',
  logout: 'M10 17l1.4-1.4-2.6-2.6H20v-2H8.8l2.6-2.6L10 7l-5 5zM4 3h8v2H4v14h8v2H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z',
  console: 'M3 4h18v16H3zm2 4l4 3-4 3v-2l2-1-2-1zm6 6h6v-2h-6z',
  back: 'M15 5l-7 7 7 7 1.4-1.4L10.8 12l5.6-5.6z',
  copy: 'M8 8h12v12H8zM4 4h12v2H6v10H4z',
  grid: 'M3 3h8v8H3zm10 0h8v8h-8zM3 13h8v8H3zm10 0h8v8h-8z',
  list: 'M3 5h18v2H3zm0 6h18v2H3zm0 6h18v2H3z',
};

export function icon(name, cls = '') {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', `icon ${cls}`);
  const p = document.createElementNS(SVG, 'path');
  p.setAttribute('d', ICONS[name] || '');
  if (name === 'activity' || name === 'sun') {
    p.setAttribute('fill', 'none');
    p.setAttribute('stroke', 'currentColor');
    p.setAttribute('stroke-width', '2');
    p.setAttribute('stroke-linecap', 'round');
  }
  svg.append(p);
  return svg;
}

// ---- formatters ----

export function bytes(n, digits = 1) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i === 0 ? 0 : digits)} ${u[i]}`;
}

export const mib = (n) => bytes(Number(n) * 1024 * 1024);
export const rate = (n) => `${bytes(n)}/s`;
export const pct = (n) => (n === null || n === undefined ? '—' : `${Number(n).toFixed(1)} %`);

export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '—';
  const d = Math.floor(seconds / 86400);
  const hr = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${Math.floor(seconds % 60)}s`;
  return `${Math.floor(seconds)}s`;
}

export function when(iso) {
  if (!iso) return '—';
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return iso;
  const ago = (Date.now() - t.getTime()) / 1000;
  if (ago < 60 && ago > -5) return 'just now';
  if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.floor(ago / 3600)} h ago`;
  return t.toLocaleString();
}

export const fullTime = (iso) => (iso ? new Date(iso).toLocaleString() : '');

// ---- status badges ----

const STATUS_TONE = {
  running: 'ok', online: 'ok', loaded: 'ok', Ready: 'ok',
  stopped: 'muted', offline: 'bad', Stopped: 'muted', Empty: 'muted',
  paused: 'warn', suspended: 'warn', Degraded: 'warn', warning: 'warn',
  booting: 'busy', shutting_down: 'busy', starting: 'busy',
  error: 'bad', failed: 'bad', critical: 'bad', info: 'info', raised: 'bad', cleared: 'muted',
};

export function badge(status, label) {
  const tone = STATUS_TONE[status] || 'muted';
  return h(`span.badge.tone-${tone}`, { 'data-status': status }, h('span.dot'), label || String(status).replace('_', ' '));
}

// ---- toasts ----

export function toast(message, kind = 'info', ms = 5000) {
  const box = document.getElementById('toasts');
  if (!box) return;
  const t = h(`div.toast.toast-${kind}`, { role: kind === 'error' ? 'alert' : 'status' }, message);
  const close = h('button.toast-close', { type: 'button', 'aria-label': 'Dismiss', onclick: () => t.remove() }, '×');
  t.append(close);
  box.append(t);
  setTimeout(() => t.remove(), ms);
}

// ---- dialogs ----

/** A modal form. fields: [{name,label,type,value,options,required,help,placeholder}].
 *  onSubmit(values) may throw to show the error inside the dialog. */
export function formDialog({ title, fields, submit = 'Save', danger = false, onSubmit, intro }) {
  return new Promise((resolve) => {
    const err = h('p.form-error', { role: 'alert', hidden: true });
    const inputs = {};
    const rows = fields.map((f) => {
      const id = `f-${f.name}-${Math.random().toString(36).slice(2, 7)}`;
      let input;
      if (f.type === 'select') {
        input = h('select', { id, name: f.name },
          f.options.map((o) => h('option', { value: o.value, selected: String(o.value) === String(f.value) }, o.label)));
      } else if (f.type === 'textarea') {
        input = h('textarea', { id, name: f.name, rows: 3, placeholder: f.placeholder }, f.value || '');
      } else if (f.type === 'checks') {
        input = h('div.checks', { id, role: 'group', 'aria-label': f.label },
          f.options.map((o) => h('label.check', h('input', { type: 'checkbox', value: o.value, checked: (f.value || []).includes(o.value) }), h('span', o.label))));
      } else {
        input = h('input', {
          id, name: f.name, type: f.type || 'text', value: f.value ?? '', required: f.required,
          placeholder: f.placeholder, min: f.min, max: f.max, autocomplete: f.autocomplete || 'off',
        });
      }
      inputs[f.name] = { f, input };
      return h('div.field', h('label', { for: id }, f.label), input, f.help ? h('small.help', f.help) : null);
    });
    const cancel = h('button.btn', { type: 'button', onclick: () => { dlg.close(); } }, 'Cancel');
    const ok = h(`button.btn.${danger ? 'btn-danger' : 'btn-primary'}`, { type: 'submit' }, submit);
    const form = h('form.dialog-form', { method: 'dialog' },
      h('h2.dialog-title', title), intro ? h('p.dialog-intro', intro) : null, rows, err,
      h('div.dialog-actions', cancel, ok));
    const dlg = h('dialog.dialog', { 'aria-label': title }, form);
    let result = null;
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const values = {};
      for (const [name, { f, input }] of Object.entries(inputs)) {
        if (f.type === 'checks') values[name] = [...input.querySelectorAll('input:checked')].map((c) => c.value);
        else if (f.type === 'number') values[name] = input.value === '' ? undefined : Number(input.value);
        else values[name] = input.value;
      }
      ok.disabled = true;
      try {
        result = (await onSubmit?.(values)) ?? values;
        dlg.close();
      } catch (e) {
        err.hidden = false;
        err.textContent = e.message || String(e);
      } finally {
        ok.disabled = false;
      }
    });
    dlg.addEventListener('close', () => { dlg.remove(); resolve(result); });
    document.body.append(dlg);
    dlg.showModal();
    const first = form.querySelector('input,select,textarea');
    if (first) first.focus();
  });
}

export async function confirmDialog(title, message, submit = 'Delete') {
  const r = await formDialog({ title, fields: [], intro: message, submit, danger: true, onSubmit: () => true });
  return r === true;
}

/** A dialog that only shows content (with a Close button). */
export function infoDialog(title, ...content) {
  const dlg = h('dialog.dialog', { 'aria-label': title },
    h('div.dialog-form', h('h2.dialog-title', title), content,
      h('div.dialog-actions', h('button.btn.btn-primary', { type: 'button', onclick: () => dlg.close() }, 'Done'))));
  dlg.addEventListener('close', () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

// ---- sparkline (canvas) ----

export function sparkline(values, { max = 100, cls = '', label = '' } = {}) {
  const c = h(`canvas.spark${cls ? `.${cls}` : ''}`, { width: 120, height: 28, role: 'img', 'aria-label': label });
  drawSpark(c, values, max);
  return c;
}

export function drawSpark(c, values, max = 100) {
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || 120;
  const hgt = c.clientHeight || 28;
  if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(hgt * dpr); }
  const ctx = c.getContext('2d');
  if (!ctx) return;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  const color = getComputedStyle(c).color;
  ctx.fillStyle = color;
  ctx.globalAlpha = 0.18;
  ctx.fillRect(0, hgt - 1, w, 1);
  ctx.globalAlpha = 1;
  if (!values.length) return;
  const n = 60;
  const pts = values.slice(-n);
  const step = w / (n - 1);
  const x0 = w - (pts.length - 1) * step;
  const y = (v) => hgt - 2 - (Math.min(Math.max(v, 0), max) / (max || 1)) * (hgt - 4);
  ctx.beginPath();
  pts.forEach((v, i) => (i ? ctx.lineTo(x0 + i * step, y(v)) : ctx.moveTo(x0, y(v))));
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.lineTo(x0 + (pts.length - 1) * step, hgt);
  ctx.lineTo(x0, hgt);
  ctx.closePath();
  ctx.globalAlpha = 0.15;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
}

export function meter(percent, label) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  const tone = p >= 90 ? 'bad' : p >= 75 ? 'warn' : 'ok';
  const bar = h(`div.meter.tone-${tone}`, { role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': p.toFixed(0), 'aria-label': label || 'usage' }, h('span.meter-fill'));
  bar.firstChild.style.width = `${p}%`;
  return bar;
}

export function emptyState(title, text, ...actions) {
  return h('div.empty', h('p.empty-title', title), text ? h('p.empty-text', text) : null, actions.length ? h('div.empty-actions', actions) : null);
}
