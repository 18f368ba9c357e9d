// A WebSocket echo server (the `ws` package) used as an upstream by Gatehouse's integration
// tests. On a WebSocket connection it first sends one text message, a JSON object with the
// handshake's path, headers and chosen subprotocol, then echoes every message back as it came
// (text as text, binary as binary). A plain HTTP request gets that JSON object as its body, so
// tests can see what an upgrade that was not relayed looked like upstream.
//
// Env: WS_PORT (required; 0: the kernel picks one, logged as `ws echo on <port>`).
import * as http from 'node:http';
import { WebSocketServer } from 'ws';

const PORT = Number(process.env.WS_PORT);
const seen = (req) => ({ path: req.url, headers: req.headers });

const server = http.createServer((req, res) => {
  const body = JSON.stringify(seen(req));
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
const wss = new WebSocketServer({
  server,
  maxPayload: 64 * 1024 * 1024,
  handleProtocols: (protocols) => (protocols.has('echo.v1') ? 'echo.v1' : false),
});
wss.on('connection', (ws, req) => {
  ws.send(JSON.stringify({ ...seen(req), protocol: ws.protocol }));
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
server.listen(PORT, '127.0.0.1', () => console.log(`ws echo on ${server.address().port}`));

const parent = process.ppid;
setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 500).unref();
