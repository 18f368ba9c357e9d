// A WebSocket client (the `ws` package) for Gatehouse's integration tests. Connects to
// WS_URL with the headers in WS_HEADERS (JSON) and subprotocol `echo.v1`, then prints one JSON
// line and exits 0:
//   {"opened": true, "hello": <the server's first message>, "echoed": [...checks...],
//    "closed": {"code": N}}
// or, when the handshake is refused, {"opened": false, "status": <HTTP status>, "body": "..."}.
// WS_SEND: how many bytes of binary to send after a text message (default 1 MiB); each echo is
// compared with what was sent. WS_HOLD=1: after the echoes, wait until the server side closes
// (printing "held" first, so a test can act meanwhile) and report the close code.
// WS_CHATTER_MS=N (with WS_HOLD=1): while holding, send a short text every N ms; the report's
// "chatter" counts the echoes that came back.
import { WebSocket } from 'ws';

const url = process.env.WS_URL;
const headers = JSON.parse(process.env.WS_HEADERS || '{}');
const size = Number(process.env.WS_SEND || 1024 * 1024);
const hold = process.env.WS_HOLD === '1';
const chatterMs = Number(process.env.WS_CHATTER_MS || 0);
const out = (o) => { console.log(JSON.stringify(o)); };

const ws = new WebSocket(url, ['echo.v1'], { headers, maxPayload: 64 * 1024 * 1024 });
ws.on('unexpected-response', (req, res) => {
  let body = '';
  res.on('data', (c) => { body += c; });
  res.on('end', () => { out({ opened: false, status: res.statusCode, body }); process.exit(0); });
});
ws.on('error', (e) => { out({ opened: false, error: String(e) }); process.exit(0); });

const messages = [];
let waiter = null;
ws.on('message', (data, isBinary) => {
  messages.push({ data, isBinary });
  if (waiter) { const w = waiter; waiter = null; w(); }
});
const next = async () => {
  if (!messages.length) await new Promise((r) => { waiter = r; });
  return messages.shift();
};

ws.on('open', async () => {
  const hello = JSON.parse((await next()).data.toString());
  const checks = [];
  ws.send('hello through Gatehouse');
  const t = await next();
  checks.push({ kind: 'text', ok: !t.isBinary && t.data.toString() === 'hello through Gatehouse' });
  const blob = Buffer.alloc(size);
  for (let i = 0; i < size; i += 1) blob[i] = (i * 7 + 3) & 0xff;
  ws.send(blob);
  const b = await next();
  checks.push({ kind: 'binary', bytes: b.data.length, ok: b.isBinary && Buffer.compare(b.data, blob) === 0 });
  if (!hold) {
    ws.close(1000, 'done');
    ws.on('close', (code) => { out({ opened: true, hello, echoed: checks, closed: { code } }); process.exit(0); });
    return;
  }
  console.log('held');
  let chatter = 0;
  if (chatterMs > 0) {
    ws.removeAllListeners('message');
    ws.on('message', () => { chatter += 1; });
    setInterval(() => { if (ws.readyState === WebSocket.OPEN) ws.send('still here'); }, chatterMs);
  }
  ws.on('close', (code) => { out({ opened: true, hello, echoed: checks, closed: { code }, chatter }); process.exit(0); });
});
