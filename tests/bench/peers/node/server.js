'use strict';
// Benchmark peer: a Node `ws` broadcast server (the usual pattern: serialize once, then
// `client.send()` to every open client; ws writes the frame header and the shared buffer).
//
//   node server.js PORT tick SIZE        one SIZE-byte DATA_DYNAMIC-shaped message per second
//   node server.js PORT flood RATE SIZE [wait]
//                                        RATE event messages per second, every 10 ms
//                                        (with `wait`: from the first SIGUSR2 on)
//   node server.js PORT idle             nothing
const { WebSocketServer } = require('ws');
const crypto = require('crypto');
const { performance } = require('perf_hooks');

const [portArg, mode, a, b] = process.argv.slice(2);
const port = Number(portArg);
if (!port || !['tick', 'flood', 'idle'].includes(mode)) {
  console.error('usage: node server.js PORT (tick SIZE | flood RATE SIZE | idle)');
  process.exit(2);
}

const originNs = BigInt(Math.round(performance.timeOrigin * 1e6));
// RFC 3339 UTC with nanoseconds (30 characters).
function timestamp() {
  const ns = originNs + BigInt(Math.round(performance.now() * 1e6));
  const secs = ns / 1000000000n;
  const frac = (ns % 1000000000n).toString().padStart(9, '0');
  return new Date(Number(secs) * 1000).toISOString().slice(0, 19) + '.' + frac + 'Z';
}

function envelope(kind, body) {
  return `{"uuid":"${crypto.randomUUID()}","type":"${kind}","body":${body},"timestamp":"${timestamp()}"}`;
}

const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
wss.on('connection', (ws) => ws.on('error', () => {}));
wss.on('listening', () => console.error(`listening on 127.0.0.1:${port}`));

function broadcast(text) {
  const data = Buffer.from(text);
  for (const client of wss.clients) {
    if (client.readyState === 1) client.send(data, { binary: false });
  }
}

const EVENTS = ['SHUTDOWN_START', 'SHUTDOWN_SUCCESS', 'BOOTUP_START', 'BOOTUP_SUCCESS'];

if (mode === 'tick') {
  const size = Number(a);
  const body = `{"pad":"${'a'.repeat(Math.max(0, size - 120 - 'DATA_DYNAMIC'.length))}"}`;
  setInterval(() => broadcast(envelope('DATA_DYNAMIC', body)), 1000);
} else if (mode === 'flood') {
  const rate = Number(a);
  const size = Number(b);
  const machines = Array.from({ length: 64 }, () => crypto.randomUUID());
  let owed = 0;
  let last = performance.now();
  let n = 0;
  let on = process.argv[6] !== 'wait';
  process.on('SIGUSR2', () => {
    on = true;
    last = performance.now();
  });
  setInterval(() => {
    if (!on) return;
    const now = performance.now();
    owed += (rate * (now - last)) / 1000;
    last = now;
    while (owed >= 1) {
      owed -= 1;
      const kind = EVENTS[n % 4];
      const machine = machines[Math.floor(n / 4) % 64];
      n += 1;
      const base = 110 + kind.length + 47;
      const body = size > base + 9
        ? `{"uuid":"${machine}","pad":"${'a'.repeat(size - base - 9)}"}`
        : `{"uuid":"${machine}"}`;
      broadcast(envelope(kind, body));
    }
  }, 10);
}
