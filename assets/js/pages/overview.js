// Overview: fleet totals, the hosts with live metrics, machines at a glance, active alerts
// (channels API, api-docs/B).

import { LiveSocket } from '../api.js';
import { h, setChildren, pct, bytes, meter, sparkline, drawSpark, badge, when, emptyState } from '../dom.js';
import { ctx } from '../store.js';
import { pageHeader } from './common.js';

export function channelSocket(channels, onEvent) {
  const sock = new LiveSocket('/ws', {
    onopen() {
      for (const [channel, filters] of channels) sock.send({ type: 'subscribe', channel, filters, id: channel });
    },
    onmessage(m) { if (m.type === 'event') onEvent(m.channel, m.data, m); },
  });
  return sock;
}

export function overviewPage(main) {
  const tiles = h('div.tiles');
  const hostsBox = h('div.hosts');
  const alertsBox = h('div');
  main.append(pageHeader('Overview', 'This host and the fleet it belongs to'), tiles,
    h('div.grid-2',
      h('section.card', { 'aria-labelledby': 'h-hosts' }, h('h2.card-title#h-hosts', 'Hosts'), hostsBox),
      h('section.card', { 'aria-labelledby': 'h-al' }, h('h2.card-title#h-al', 'Active alerts'), alertsBox)));

  let fleet = null;
  const hosts = new Map(); // host_id -> {hostname,status,metrics,cpuHist,memHist}
  const alerts = new Map();

  const tile = (label, value, sub, tone = '') => h(`div.tile${tone ? `.tone-${tone}` : ''}`, h('span.tile-label', label), h('span.tile-value', value), sub ? h('span.tile-sub', sub) : null);

  function renderTiles() {
    const ms = ctx.machines;
    const list = ms ? ms.list() : [];
    const running = list.filter((m) => ms.state.get(m.uuid)?.status === 'running').length;
    const f = fleet || {};
    setChildren(tiles,
      tile('Hosts online', fleet ? `${f.online_hosts} / ${f.total_hosts}` : '—', f.offline_hosts ? `${f.offline_hosts} offline` : 'all reachable', f.offline_hosts ? 'bad' : 'ok'),
      tile('Machines running', `${running} / ${list.length}`, `${list.length - running} stopped or paused`),
      tile('Active alerts', String(alerts.size), alerts.size ? 'needs attention' : 'all clear', alerts.size ? 'warn' : 'ok'),
      tile('Hosts with alerts', fleet ? String(f.hosts_with_alerts) : '—', fleet ? `updated ${when(f.last_updated)}` : ''));
  }

  function renderHosts() {
    if (!hosts.size) { setChildren(hostsBox, h('div.loading', h('span.spinner'), 'Waiting for host status…')); return; }
    setChildren(hostsBox, [...hosts.entries()].map(([id, x]) => {
      const m = x.metrics || {};
      const cpu = sparkline(x.cpuHist, { cls: 'spark-cpu', label: `CPU of ${x.hostname}` });
      const mem = sparkline(x.memHist, { cls: 'spark-mem', label: `Memory of ${x.hostname}` });
      requestAnimationFrame(() => { drawSpark(cpu, x.cpuHist); drawSpark(mem, x.memHist); });
      const disks = m.disks || [];
      return h('article.host', { 'data-host': id },
        h('header.row-between', h('div', h('strong.host-name', x.hostname), ' ', badge(x.status)), h('span.muted.small', m.load_average ? `load ${m.load_average.map((v) => v.toFixed(2)).join(' ')}` : '')),
        h('div.metrics',
          h('div.metric', h('span.metric-label', 'CPU'), h('span.metric-value', pct(m.cpu_usage)), cpu),
          h('div.metric', h('span.metric-label', 'Memory'), h('span.metric-value', pct(m.memory_usage)), mem)),
        disks.length ? h('div.host-disks', disks.slice(0, 4).map((d) => {
          const p = d.total_bytes ? (100 * d.used_bytes) / d.total_bytes : 0;
          return h('div.disk-row', h('span.mono.small', d.mount), meter(p, `${d.mount} used`), h('span.small', `${bytes(d.used_bytes, 0)} of ${bytes(d.total_bytes, 0)}`));
        })) : null);
    }));
  }

  function renderAlerts() {
    if (!alerts.size) { setChildren(alertsBox, emptyState('All clear', 'No alert is raised right now.')); return; }
    setChildren(alertsBox, h('ul.alert-list', [...alerts.values()].map((a) => h(`li.alert.sev-${a.severity}`,
      badge(a.severity), h('div', h('strong', a.title), h('p.small', a.message), h('span.muted.small', `${a.hostname || ''} · ${when(a.timestamp)}`))))));
  }

  const sock = channelSocket([['fleet_status'], ['host_status'], ['host_metrics'], ['system_alerts']], (ch, d) => {
    if (ch === 'fleet_status') { fleet = d; renderTiles(); return; }
    if (ch === 'host_status') {
      const x = hosts.get(d.host_id) || { cpuHist: [], memHist: [] };
      Object.assign(x, { hostname: d.hostname, status: d.status });
      hosts.set(d.host_id, x);
      renderHosts();
    } else if (ch === 'host_metrics') {
      const x = hosts.get(d.host_id) || { hostname: d.hostname || d.host_id, status: 'online', cpuHist: [], memHist: [] };
      x.metrics = d.metrics;
      x.cpuHist.push(d.metrics.cpu_usage || 0);
      x.memHist.push(d.metrics.memory_usage || 0);
      if (x.cpuHist.length > 60) { x.cpuHist.shift(); x.memHist.shift(); }
      hosts.set(d.host_id, x);
      renderHosts();
    } else if (ch === 'system_alerts') {
      if (d.state === 'cleared') alerts.delete(d.alert_id); else alerts.set(d.alert_id, d);
      renderAlerts(); renderTiles();
    }
  });
  const off = ctx.machines ? ctx.machines.on((m) => { if (m.type !== 'DATA_DYNAMIC_DISKS') renderTiles(); }) : () => {};
  renderTiles(); renderHosts(); renderAlerts();
  return { cleanup() { sock.close(); off(); } };
}
