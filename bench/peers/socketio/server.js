// socket.io 4 on Node, as the seed teams ran it: rooms via socket.join, events
// `join` (ack {room}), `send` (ack {room, seq}) and `msg` broadcast to the room, sender included.
// /healthz on the same port. Usage: node server.js [--listen 127.0.0.1:9004]
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const arg = process.argv.indexOf('--listen');
const [host, port] = (arg > 0 ? process.argv[arg + 1] : '127.0.0.1:9004').split(':');
const lastSeq = new Map(); // room -> last sequence number

const server = http.createServer((req, res) => {
  if (req.url === '/healthz' || req.url === '/readyz') { res.writeHead(200); return res.end('ok\n'); }
});
const io = new Server(server, { transports: ['websocket'], serveClient: false });

io.on('connection', (socket) => {
  const user = socket.handshake.query.user || 'anonymous';
  socket.on('join', (room, ack) => {
    if (typeof room !== 'string') return typeof ack === 'function' && ack({ error: 'bad_request' });
    socket.join(room);
    if (typeof ack === 'function') ack({ room, last_seq: lastSeq.get(room) || 0 });
  });
  socket.on('send', (m, ack) => {
    if (!m || typeof m.room !== 'string' || !socket.rooms.has(m.room)) {
      return typeof ack === 'function' && ack({ error: 'not_member' });
    }
    const seq = (lastSeq.get(m.room) || 0) + 1;
    lastSeq.set(m.room, seq);
    const ts = Date.now();
    if (typeof ack === 'function') ack({ room: m.room, seq, ts });
    io.to(m.room).emit('msg', { room: m.room, seq, from: user, body: String(m.body || ''), ts });
  });
});

server.listen(Number(port), host, () => console.error(`socket.io peer listening on ${host}:${port}`));
