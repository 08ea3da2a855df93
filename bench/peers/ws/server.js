// The lighter Node option: the `ws` package, rooms in a Map, sokdo's protocol subset
// (hello, join, send, ping → ok/error replies, msg events), /healthz on the same port.
// Usage: node server.js [--listen 127.0.0.1:9003]
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const arg = process.argv.indexOf('--listen');
const [host, port] = (arg > 0 ? process.argv[arg + 1] : '127.0.0.1:9003').split(':');
const rooms = new Map(); // room -> { members: Set<ws>, lastSeq }
let sessions = 0;

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' || req.url === '/readyz' ? 200 : 404);
  res.end('ok\n');
});
const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (!req.url.startsWith('/ws')) return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => {
    const user = new URL(req.url, 'http://x').searchParams.get('user') || 'anonymous';
    onConnection(ws, user);
  });
});

function onConnection(ws, user) {
  const joined = new Set();
  ws.send(JSON.stringify({ op: 'hello', user, session: `s${sessions++}`, instance: 'ws-peer',
    shard: 0, heartbeat_ms: 30000,
    limits: { body_bytes_max: 4096, frame_bytes_max: 65536, outbound_queue_bytes_max: 0 } }));
  ws.on('message', (data) => {
    let req;
    try { req = JSON.parse(data); } catch (e) {
      return ws.send(JSON.stringify({ op: 'error', code: 'bad_request', message: 'not JSON' }));
    }
    const id = req.id === undefined ? null : req.id;
    if (req.op === 'ping') return ws.send(JSON.stringify({ op: 'ok', id, pong: true }));
    if (typeof req.room !== 'string') {
      return ws.send(JSON.stringify({ op: 'error', id, code: 'bad_request', message: 'missing room' }));
    }
    if (req.op === 'join') {
      let room = rooms.get(req.room);
      if (!room) { room = { members: new Set(), lastSeq: 0 }; rooms.set(req.room, room); }
      room.members.add(ws);
      joined.add(req.room);
      return ws.send(JSON.stringify({ op: 'ok', id, room: req.room, last_seq: room.lastSeq, unread: 0 }));
    }
    if (req.op === 'send') {
      const room = rooms.get(req.room);
      if (!room || !joined.has(req.room)) {
        return ws.send(JSON.stringify({ op: 'error', id, code: 'not_member', message: 'join first' }));
      }
      const seq = ++room.lastSeq;
      const ts = Date.now();
      const msgId = `${req.room}-${seq}`;
      ws.send(JSON.stringify({ op: 'ok', id, room: req.room, seq, msg_id: msgId, ts }));
      const event = JSON.stringify({ op: 'msg', room: req.room, seq, msg_id: msgId, from: user,
        body: String(req.body || ''), ts });
      for (const member of room.members) member.send(event);
      return;
    }
    ws.send(JSON.stringify({ op: 'error', id, code: 'bad_request', message: 'unknown op' }));
  });
  ws.on('error', () => {});
  ws.on('close', () => {
    for (const name of joined) {
      const room = rooms.get(name);
      if (room) room.members.delete(ws);
    }
  });
}

server.listen(Number(port), host, () => console.error(`ws peer listening on ${host}:${port}`));
