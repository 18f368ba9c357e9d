// STAND-IN for the part of the Gitea/Forgejo REST API that Gatehouse's forge-group enrichment
// calls. It is NOT a forge: no Gitea or Forgejo can be installed from this machine's package
// registries, so the tests use this stand-in, which answers exactly as Gitea 1.2x documents:
//   GET /api/v1/user/orgs?limit=&page=    -> [{"id", "username", "name", ...}]
//   GET /api/v1/user/teams?limit=&page=   -> [{"id", "name", "organization": {"username", ...}}]
// with `Authorization: token <STANDIN_TOKEN>` (401 otherwise) acting as the user named by the
// `Sudo` header (404 "user does not exist" for an unknown user), paged like Gitea.
//
// Env: STANDIN_PORT (required; 0: the kernel picks one, logged as `forge stand-in on <port>`),
//   STANDIN_TOKEN, STANDIN_USERS as JSON
//   {"alice": {"orgs": ["acme"], "teams": [["acme", "release"]]}}
// Test controls (FAULT INJECTION): GET /_calls -> number of API calls answered;
//   POST /_fault?status=500 makes every API call fail with that status (status=0 clears it).
import * as http from 'node:http';

const PORT = Number(process.env.STANDIN_PORT);
const TOKEN = process.env.STANDIN_TOKEN || 'forge-admin-token';
const USERS = JSON.parse(process.env.STANDIN_USERS || '{}');
let calls = 0;
let fault = 0;

const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

const server = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://standin.invalid');
  if (u.pathname === '/_calls') return json(res, 200, { calls });
  if (u.pathname === '/_fault' && req.method === 'POST') {
    fault = Number(u.searchParams.get('status') || 0);
    return json(res, 200, { fault });
  }
  const m = u.pathname.match(/^\/api\/v1\/user\/(orgs|teams)$/);
  if (!m || req.method !== 'GET') return json(res, 404, { message: 'not found' });
  calls += 1;
  if (fault) return json(res, fault, { message: 'injected fault' });
  if (req.headers.authorization !== `token ${TOKEN}`) return json(res, 401, { message: 'token is required' });
  const who = USERS[req.headers.sudo];
  if (!who) return json(res, 404, { message: 'user does not exist' });
  const limit = Math.max(1, Number(u.searchParams.get('limit') || 30));
  const page = Math.max(1, Number(u.searchParams.get('page') || 1));
  const all = m[1] === 'orgs'
    ? (who.orgs || []).map((o, i) => ({ id: i + 1, username: o, name: o, full_name: '' }))
    : (who.teams || []).map(([org, team], i) => ({
      id: 100 + i, name: team, permission: 'write', organization: { id: 1, username: org, name: org },
    }));
  return json(res, 200, all.slice((page - 1) * limit, page * limit));
});
server.listen(PORT, '127.0.0.1', () => console.log(`forge stand-in on ${server.address().port}`));

if (process.env.STANDIN_EXIT_WITH_PARENT === '1') {
  const parent = process.ppid;
  setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 500).unref();
}
