// Live time-series charts with uPlot, coloured from the CSS theme.

import uPlot from '/vendor/uplot/uPlot.esm.js';
import { h, bytes } from './dom.js';

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

const WINDOW = 300; // seconds shown: the last five minutes
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });

/** series: [{label, color: '--css-var', fmt}]; yMax: fixed maximum or null. */
export function liveChart(box, { title, series, yMax = null, fmt = (v) => String(v) }) {
  const holder = h('div.chart-plot');
  const legend = h('div.chart-legend');
  box.append(h('div.chart', h('div.chart-head', h('h3.chart-title', title), legend), holder));
  let plot = null;
  let data = [[], ...series.map(() => [])];

  const build = () => {
    plot?.destroy();
    const width = Math.max(200, holder.clientWidth || 300);
    const grid = { stroke: css('--chart-grid'), width: 1 };
    const axis = { stroke: css('--muted'), grid, ticks: { stroke: css('--chart-grid') }, font: '11px system-ui, sans-serif' };
    plot = new uPlot({
      width, height: 150, legend: { show: false }, cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: (u, min, max) => [max - WINDOW, max] },
        y: { range: (u, min, max) => [0, yMax ?? Math.max(max * 1.15, 1)] },
      },
      axes: [{ ...axis, space: 70, values: (u, vals) => vals.map(clock) }, { ...axis, size: 78, values: (u, vals) => vals.map(fmt) }],
      series: [{}, ...series.map((s) => ({
        label: s.label, stroke: css(s.color), width: 1.5, fill: `${css(s.color)}22`, points: { show: false },
      }))],
    }, data, holder);
  };

  const ro = new ResizeObserver(() => {
    if (!plot) return;
    const w = Math.max(200, holder.clientWidth);
    if (Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height: 150 });
  });
  ro.observe(holder);
  const onTheme = () => build();
  window.addEventListener('orchard-theme', onTheme);
  requestAnimationFrame(build);

  return {
    set(t, ...cols) {
      data = [t, ...cols];
      plot?.setData(data);
      legend.replaceChildren(...series.map((s, i) => {
        const last = cols[i].length ? cols[i][cols[i].length - 1] : null;
        const sw = h('span.swatch');
        sw.style.background = css(s.color);
        return h('span.legend-item', sw, `${s.label} `, h('strong', last === null ? '—' : fmt(last)));
      }));
    },
    dispose() { ro.disconnect(); window.removeEventListener('orchard-theme', onTheme); plot?.destroy(); },
  };
}

export const fmtPct = (v) => `${Math.round(v)}%`;
export const fmtRate = (v) => `${bytes(v, 0)}/s`;
