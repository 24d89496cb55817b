// The session (token in sessionStorage, refreshed before expiry), REST calls, and
// reconnecting WebSockets.

const KEY = 'orchard.session';
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  token: null,
  expiresAt: 0,
  user: null,
  timer: null,

  load() {
    try {
      const s = JSON.parse(sessionStorage.getItem(KEY) || 'null');
      if (s && s.token && s.expiresAt > Date.now() + 5000) {
        this.token = s.token;
        this.expiresAt = s.expiresAt;
      }
    } catch { /* a damaged entry is no session */ }
    return !!this.token;
  },

  set(tokenResponse) {
    this.token = tokenResponse.access_token;
    this.expiresAt = Date.now() + tokenResponse.expires_in * 1000;
    sessionStorage.setItem(KEY, JSON.stringify({ token: this.token, expiresAt: this.expiresAt }));
    this.schedule();
    for (const l of listeners) l('token');
  },

  schedule() {
    clearTimeout(this.timer);
    if (!this.token) return;
    // Refresh at 80 % of the lifetime (at least 10 s before expiry).
    const left = this.expiresAt - Date.now();
    const at = Math.max(1000, Math.min(left * 0.8, left - 10000));
    this.timer = setTimeout(() => this.refresh(), at);
  },

  async refresh() {
    try {
      const r = await api('POST', '/api/auth/refresh');
      this.set(r);
    } catch (e) {
      // Beyond the maximum session length the refresh is refused: the session ends at expiry.
      if (e.status === 401) this.end('Your session has ended. Please sign in again.');
    }
  },

  end(message) {
    clearTimeout(this.timer);
    const had = !!this.token;
    this.token = null;
    this.user = null;
    sessionStorage.removeItem(KEY);
    if (had) for (const l of listeners) l('ended', message);
  },

  on(fn) { listeners.add(fn); return () => listeners.delete(fn); },

  can(perm) { return !!this.user && this.user.permissions.includes(perm); },
};

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch {
    throw new ApiError(0, 'NETWORK', 'The server cannot be reached.');
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = data && data.error ? data.error : {};
    if (res.status === 401 && session.token && path !== '/api/auth/login') {
      session.end('Your session has expired. Please sign in again.');
    }
    throw new ApiError(res.status, err.code, err.message || `${res.status} ${res.statusText}`);
  }
  return data;
}

export async function login(username, password) {
  const r = await api('POST', '/api/auth/login', { username, password });
  session.set(r);
  session.user = await api('GET', '/api/auth/me');
  return session.user;
}

export async function logout() {
  try { await api('POST', '/api/auth/logout'); } catch { /* the token is dropped anyway */ }
  session.end();
}

function wsUrl(path) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const sep = path.includes('?') ? '&' : '?';
  return `${proto}//${location.host}${path}${sep}access_token=${encodeURIComponent(session.token || '')}`;
}

const sockets = new Set();

/** Connection state of all live sockets, for the header indicator. */
export const liveState = {
  listeners: new Set(),
  get() {
    let down = 0;
    for (const s of sockets) if (!s.open && !s.stopped) down++;
    return down ? 'reconnecting' : 'live';
  },
  changed() { for (const l of this.listeners) l(this.get()); },
};

/** A WebSocket that reconnects with exponential backoff and jitter, follows token refreshes
 *  and ends the session on 4401. Handlers: onmessage(obj), onopen(), onclose(code, reason),
 *  onforbidden(). */
export class LiveSocket {
  constructor(path, handlers = {}) {
    this.path = path;
    this.h = handlers;
    this.attempt = 0;
    this.open = false;
    this.stopped = false;
    this.ws = null;
    this.retryTimer = null;
    this.offToken = session.on((what) => {
      if (what === 'token' && this.ws) this.reconnectNow();
      if (what === 'ended') this.close();
    });
    sockets.add(this);
    this.connect();
  }

  connect() {
    if (this.stopped || !session.token) return;
    const token = session.token;
    const ws = new WebSocket(wsUrl(this.path));
    this.ws = ws;
    ws.onopen = () => {
      this.open = true;
      this.attempt = 0;
      liveState.changed();
      this.h.onopen?.();
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      this.h.onmessage?.(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.open = false;
      liveState.changed();
      if (this.stopped) return;
      const verdict = this.h.onclose?.(ev.code, ev.reason);
      if (ev.code === 4401) {
        // A refreshed token reconnects; a revoked or expired one ends the session.
        if (session.token && session.token !== token) { this.connect(); return; }
        session.end('Your session has ended. Please sign in again.');
        return;
      }
      if (ev.code === 4403) { this.h.onforbidden?.(); this.stopped = true; return; }
      if (verdict === 'stop') { this.stopped = true; return; }
      this.schedule();
    };
  }

  schedule() {
    clearTimeout(this.retryTimer);
    const base = Math.min(15000, 500 * 2 ** this.attempt);
    this.attempt++;
    this.retryTimer = setTimeout(() => this.connect(), base / 2 + Math.random() * base / 2);
  }

  reconnectNow() {
    const old = this.ws;
    this.ws = null;
    if (old) { old.onclose = null; old.close(1000); }
    this.open = false;
    this.attempt = 0;
    this.connect();
  }

  /** Tries again now (after a "stop" verdict, e.g. the machine has started). */
  retry() {
    this.stopped = false;
    if (!this.ws) { clearTimeout(this.retryTimer); this.attempt = 0; this.connect(); }
  }

  send(obj) {
    if (this.ws && this.open) { this.ws.send(JSON.stringify(obj)); return true; }
    return false;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.offToken();
    sockets.delete(this);
    const ws = this.ws;
    this.ws = null;
    if (ws) { ws.onclose = null; ws.close(1000); }
    liveState.changed();
  }
}
