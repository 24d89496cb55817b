// The machine console: xterm.js over /ws/vms/{uuid}/console (console / console_input /
// console_resize), reconnecting while the machine runs.

import { Terminal } from '/vendor/xterm/xterm.mjs';
import { FitAddon } from '/vendor/xterm-addon-fit/addon-fit.mjs';
import { LiveSocket } from './api.js';
import { h, setChildren } from './dom.js';

// xterm.js writes its measured cell sizes and theme into <style> elements, which the
// Content-Security-Policy (style-src 'self') does not apply. Mirror their text into
// constructed style sheets, which CSP allows, and keep them in sync.
function mirrorStyles(root) {
  const sheets = new Map();
  const sync = () => {
    const seen = new Set();
    for (const el of root.querySelectorAll('style')) {
      seen.add(el);
      let sheet = sheets.get(el);
      if (!sheet) {
        sheet = new CSSStyleSheet();
        sheets.set(el, sheet);
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
      }
      if (sheet.__text !== el.textContent) {
        sheet.__text = el.textContent;
        sheet.replaceSync(el.textContent);
      }
    }
    for (const [el, sheet] of sheets) {
      if (!seen.has(el)) {
        sheets.delete(el);
        document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
      }
    }
  };
  const mo = new MutationObserver(sync);
  mo.observe(root, { subtree: true, childList: true, characterData: true });
  sync();
  return () => {
    mo.disconnect();
    const mine = new Set(sheets.values());
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => !mine.has(s));
  };
}

function themeFor() {
  const cs = getComputedStyle(document.documentElement);
  const v = (n) => cs.getPropertyValue(n).trim();
  return { background: v('--term-bg'), foreground: v('--term-fg'), cursor: v('--accent'), selectionBackground: v('--term-sel') };
}

/** Mounts a console into `box`. `isRunning()` says whether to keep trying. */
export function mountConsole(box, { uuid, title, isRunning }) {
  const screen = h('div.term-screen', { id: 'console-screen' });
  const status = h('span.term-status', { role: 'status' }, 'Connecting…');
  const overlay = h('div.term-overlay', { hidden: true });
  setChildren(box, h('div.term-bar', h('span.term-title', `${title} — serial console`), status), h('div.term-wrap', screen, overlay));
  const term = new Terminal({
    cursorBlink: true, convertEol: false, scrollback: 5000, fontSize: 14,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace', theme: themeFor(),
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  const unmirror = mirrorStyles(screen);
  const refit = () => { try { fit.fit(); } catch { /* not visible yet */ } };
  requestAnimationFrame(refit);
  const ro = new ResizeObserver(refit);
  ro.observe(screen);
  const onTheme = () => { term.options.theme = themeFor(); };
  window.addEventListener('orchard-theme', onTheme);

  let connected = false;
  const sendSize = () => sock.send({ type: 'console_resize', timestamp: new Date().toISOString(), data: { cols: term.cols, rows: term.rows } });
  const showOverlay = (text) => { overlay.hidden = !text; overlay.textContent = text || ''; };

  const sock = new LiveSocket(`/ws/vms/${encodeURIComponent(uuid)}/console`, {
    onopen: () => {
      connected = true;
      status.textContent = 'Connected';
      status.dataset.state = 'ok';
      showOverlay(null);
      sendSize();
    },
    onmessage: (m) => {
      if (m.type === 'console') {
        if (m.data.content) term.write(m.data.content);
        if (m.data.eof) term.write('\r\n\x1b[2m[console closed]\x1b[0m\r\n');
      } else if (m.type === 'error') {
        if (m.data.code === 'VM_NOT_RUNNING') showOverlay('The machine is not running. The console connects when it starts.');
        else if (m.data.code === 'AUTH_ERROR') showOverlay(`No console access: ${m.data.message}`);
        else showOverlay(m.data.message || m.data.code);
      } else if (m.type === 'heartbeat') {
        sock.send({ type: 'heartbeat', timestamp: new Date().toISOString(), data: {} });
      }
    },
    onclose: () => {
      connected = false;
      status.textContent = isRunning() ? 'Reconnecting…' : 'Disconnected';
      status.dataset.state = 'warn';
      return isRunning() ? undefined : 'stop';
    },
    onforbidden: () => { showOverlay('You do not have console access to this machine (ACCESS_CONSOLE).'); status.textContent = 'No access'; },
  });
  term.onData((d) => { if (connected) sock.send({ type: 'console_input', timestamp: new Date().toISOString(), data: { content: d } }); });
  term.onResize(() => { if (connected) sendSize(); });

  return {
    term,
    /** The machine's status changed: reconnect when it runs again. */
    statusChanged(running) {
      if (running && !connected) sock.retry();
      if (!running) showOverlay('The machine is not running. The console connects when it starts.');
    },
    focus() { term.focus(); },
    dispose() {
      sock.close();
      ro.disconnect();
      window.removeEventListener('orchard-theme', onTheme);
      unmirror();
      term.dispose();
    },
  };
}
