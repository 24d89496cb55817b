// The machines stream (api-docs/A): properties, state, disks, connections, a short history
// per machine for sparklines and charts, and the progress of power operations.

import { LiveSocket, api } from './api.js';

/** Shared state for pages: the machines store of this session. */
export const ctx = { machines: null };

const HISTORY = 600; // samples (one a second): ten minutes

export class MachineStore {
  constructor(endpoint) {
    this.endpoint = endpoint;
    this.props = new Map();
    this.state = new Map();
    this.disks = new Map();
    this.conns = new Map();
    this.hist = new Map();
    this.ops = new Map(); // uuid -> {kind:'boot'|'shutdown', phase:'start'|'fail', error}
    this.loaded = false;
    this.listeners = new Set();
    this.socket = new LiveSocket(`/ws/machines/${endpoint}`, {
      onmessage: (m) => this.onMessage(m),
      onopen: () => { this.fresh = true; },
      onforbidden: () => { this.forbidden = true; this.emit({ type: 'FORBIDDEN' }); },
    });
  }

  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }
  emit(ev) { for (const l of this.listeners) l(ev); }

  onMessage(m) {
    const b = m.body || {};
    switch (m.type) {
      case 'DATA_STATIC':
        if (this.fresh) {
          // The first DATA_STATIC after (re)connecting is the full set.
          for (const u of [...this.props.keys()]) if (!(u in b)) this.forget(u);
          this.fresh = false;
        }
        for (const [u, p] of Object.entries(b)) this.props.set(u, p);
        this.loaded = true;
        break;
      case 'CREATE':
        this.props.set(b.uuid, b);
        break;
      case 'DELETE':
        this.forget(b.uuid);
        break;
      case 'DATA_DYNAMIC':
        for (const [u, s] of Object.entries(b)) this.sample(u, s, m.timestamp);
        break;
      case 'DATA_DYNAMIC_DISKS':
        for (const [u, d] of Object.entries(b)) this.disks.set(u, d.disks || []);
        break;
      case 'DATA_DYNAMIC_CONNECTIONS':
        for (const [u, c] of Object.entries(b)) this.conns.set(u, c.active_connections || []);
        break;
      case 'BOOTUP_START': this.ops.set(b.uuid, { kind: 'boot', phase: 'start' }); break;
      case 'SHUTDOWN_START': this.ops.set(b.uuid, { kind: 'shutdown', phase: 'start' }); break;
      case 'BOOTUP_SUCCESS':
      case 'SHUTDOWN_SUCCESS':
        this.ops.delete(b.uuid);
        break;
      case 'BOOTUP_FAIL': this.ops.set(b.uuid, { kind: 'boot', phase: 'fail', error: b.error }); break;
      case 'SHUTDOWN_FAIL': this.ops.set(b.uuid, { kind: 'shutdown', phase: 'fail', error: b.error }); break;
      default: return;
    }
    this.emit(m);
  }

  forget(u) {
    for (const map of [this.props, this.state, this.disks, this.conns, this.hist, this.ops]) map.delete(u);
  }

  sample(u, s, ts) {
    const prev = this.state.get(u);
    this.state.set(u, s);
    let h = this.hist.get(u);
    if (!h) { h = { t: [], cpu: [], mem: [], rx: [], tx: [], rd: [], wr: [] }; this.hist.set(u, h); }
    const t = ts ? Date.parse(ts) / 1000 : Date.now() / 1000;
    const dt = prev && h.t.length ? Math.max(t - h.t[h.t.length - 1], 0.001) : 0;
    const d = (k) => (dt && prev ? Math.max(0, (s[k] - prev[k]) / dt) : 0);
    h.t.push(t);
    h.cpu.push(s.cpu_percent || 0);
    h.mem.push(s.ram_max ? (100 * (s.ram_used || 0)) / s.ram_max : 0);
    h.rx.push(d('net_rx_bytes'));
    h.tx.push(d('net_tx_bytes'));
    h.rd.push(d('disk_read_bytes'));
    h.wr.push(d('disk_write_bytes'));
    if (h.t.length > HISTORY) for (const k of Object.keys(h)) h[k].shift();
  }

  list() {
    return [...this.props.values()].sort((a, b) => a.title.localeCompare(b.title, undefined, { numeric: true }));
  }

  close() { this.socket.close(); this.listeners.clear(); }
}

/** Stored subscriptions (the stars). */
export const subscriptions = {
  set: new Set(),
  listeners: new Set(),
  async load() {
    const r = await api('GET', '/api/subscriptions');
    const list = Array.isArray(r) ? r : (r && (r.machines || r.subscriptions)) || [];
    this.set = new Set(list.map((x) => (typeof x === 'string' ? x : x.machine_uuid || x.uuid)));
    this.changed();
  },
  async toggle(uuid) {
    if (this.set.has(uuid)) {
      await api('DELETE', `/api/subscriptions/${uuid}`);
      this.set.delete(uuid);
    } else {
      await api('PUT', `/api/subscriptions/${uuid}`);
      this.set.add(uuid);
    }
    this.changed();
  },
  changed() { for (const l of this.listeners) l(); },
};
