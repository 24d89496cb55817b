'use strict';
// An independent load client for the overload scenario (tests/bench/overload.sh): COUNT
// Node `ws` clients read a machines stream for SECONDS and check, each on its own, that every
// lifecycle event of every machine arrived in order (SHUTDOWN_START → SHUTDOWN_SUCCESS →
// BOOTUP_START → BOOTUP_SUCCESS → SHUTDOWN_START …; a failed boot may be followed by a new
// start, a failed shutdown by a new shutdown). Prints one JSON line: clients opened, how
// clients ended during the window (by close code), messages and lifecycle events received,
// gaps (an event that does not follow its machine's previous one) and clients with gaps.
//
//   node lifecycle-client.js URL COUNT SECONDS
const WebSocket = require('ws');

const [url, countArg, secondsArg] = process.argv.slice(2);
const count = Number(countArg);
const seconds = Number(secondsArg);
if (!url || !count || !seconds) {
  console.error('usage: node lifecycle-client.js URL COUNT SECONDS');
  process.exit(2);
}

const STEP = {
  SHUTDOWN_START: 'ss',
  SHUTDOWN_SUCCESS: 'se',
  SHUTDOWN_FAIL: 'sf',
  BOOTUP_START: 'bs',
  BOOTUP_SUCCESS: 'be',
  BOOTUP_FAIL: 'bf',
};
const NEXT = {
  ss: ['se', 'sf'],
  se: ['bs'],
  sf: ['ss'],
  bs: ['be', 'bf'],
  be: ['ss'],
  bf: ['bs', 'ss'],
};

const totals = { opened: 0, failed: 0, msgs: 0, events: 0, gaps: 0, clientsWithGaps: 0, ended: {} };
let windowOpen = true;

function client() {
  const last = new Map();
  let gaps = 0;
  const ws = new WebSocket(url, { perMessageDeflate: false });
  ws.on('open', () => { totals.opened += 1; });
  ws.on('message', (data) => {
    totals.msgs += 1;
    const m = JSON.parse(data);
    const step = STEP[m.type];
    if (!step || !m.body || !m.body.uuid) return;
    totals.events += 1;
    const before = last.get(m.body.uuid);
    last.set(m.body.uuid, step);
    if (before && !NEXT[before].includes(step)) {
      if (gaps === 0) totals.clientsWithGaps += 1;
      gaps += 1;
      totals.gaps += 1;
    }
  });
  ws.on('close', (code) => {
    if (windowOpen) totals.ended[`close ${code}`] = (totals.ended[`close ${code}`] || 0) + 1;
  });
  ws.on('error', () => { totals.failed += 1; });
  return ws;
}

const sockets = [];
for (let i = 0; i < count; i += 1) sockets.push(client());
setTimeout(() => {
  windowOpen = false;
  for (const ws of sockets) ws.terminate();
  console.log(JSON.stringify({ client: 'node-ws', clients: count, ...totals }));
  process.exit(0);
}, seconds * 1000);
