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
//
// It also stands in for the lookups Gatehouse makes for web and API routes that move refs, as
// Gitea's API answers them (routers/api/v1/repo/pull.go GetPullRequest, release.go GetRelease,
// repo.go Get; structs PullRequest{base,head: PRBranchInfo{ref, repo{full_name}}}, Release
// {tag_name}, Repository{default_branch}), for the repositories in STANDIN_REPOS:
//   {"acme/api": {"default_branch": "main",
//                 "pulls": {"7": {"base": "main", "head": "feature", "head_repo": "acme/api"}},
//                 "releases": {"4": "v1.0"}},
//    "acme/new": {"empty": true}}
//   GET /api/v1/repos/{owner}/{repo}            -> {"full_name", "default_branch", "empty"}
//   GET /api/v1/repos/{owner}/{repo}/pulls/{n}  -> {"number", "base": {...}, "head": {...}}
//   GET /api/v1/repos/{owner}/{repo}/releases/{id} -> {"id", "tag_name"}
//   GET /api/v1/repos/{owner}/{repo}/tags?limit=&page=     -> [{"name"}] (from "tags": [...])
//   GET /api/v1/repos/{owner}/{repo}/releases?limit=&page= -> [{"id", "tag_name"}]
// with the same token (a deleted head repository is `"head_repo": null`).
// And Gitea Actions' jobs and runs (Gitea 1.25: routers/api/v1/repo/action.go GetWorkflowJob,
// GetWorkflowRun; structs ActionWorkflowJob, ActionWorkflowRun; a job or run of another
// repository is 404, as Gitea's `job.RepoID != ctx.Repo.Repository.ID` check answers):
//   "acme/api": {"actions": {
//       "runs": {"42": {"path": "deploy.yml@refs/heads/main", "event": "push",
//                       "head_sha": "...", "head_branch": "main", "actor": "alice"}},
//       "jobs": {"77": {"run_id": 42, "status": "in_progress", "head_sha": "...",
//                       "runner_name": "runner-1", "name": "deploy"}}}}
//   GET /api/v1/repos/{owner}/{repo}/actions/jobs/{id} -> ActionWorkflowJob
//   GET /api/v1/repos/{owner}/{repo}/actions/runs/{id} -> ActionWorkflowRun
// POST /_job?repo=acme/api&job=77&status=completed changes a job's status (the job ends);
// `&status=in_progress&attempt=2` re-runs it, as Gitea re-runs a job (the same job, a new attempt).
// And annotated tags, read from a real repository under STANDIN_GIT_ROOT (`<root>/<owner>/<repo>.git`)
// as Gitea's GetAnnotatedTag answers (routers/api/v1/repo/tag.go; convert.ToAnnotatedTag): the
// object is the commit the tag peels to; 400 when the id is not an annotated tag:
//   GET /api/v1/repos/{owner}/{repo}/git/tags/{sha} -> {"tag", "sha", "object": {"type", "sha"}}
// Any other request is the forge's web UI or API as Gatehouse forwards it: it is RECORDED
// (method, path and query, the identity header, the request id, the body) and answered 200, so
// that a test can see what reached the forge and that it came unchanged.
//
// Test controls (FAULT INJECTION): GET /_calls -> number of API calls answered;
//   POST /_fault?status=500 makes every API call fail with that status (status=0 clears it);
//   GET /_received -> the recorded requests.
import * as http from 'node:http';
import { execFileSync } from 'node:child_process';

const PORT = Number(process.env.STANDIN_PORT);
const TOKEN = process.env.STANDIN_TOKEN || 'forge-admin-token';
const USERS = JSON.parse(process.env.STANDIN_USERS || '{}');
const REPOS = JSON.parse(process.env.STANDIN_REPOS || '{}');
const GIT_ROOT = process.env.STANDIN_GIT_ROOT || '';

const annotatedTag = (res, full, sha) => {
  if (!GIT_ROOT || !/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(sha)) return json(res, 400, { message: 'invalid sha' });
  const git = (...args) => execFileSync('git', ['--git-dir', `${GIT_ROOT}/${full}.git`, ...args]).toString().trim();
  try {
    if (git('cat-file', '-t', sha) !== 'tag') return json(res, 400, { message: `${sha} is not an annotated tag` });
    const name = (git('cat-file', '-p', sha).match(/^tag (.*)$/m) || [])[1] || '';
    const commit = git('rev-parse', `${sha}^{commit}`);
    return json(res, 200, { tag: name, sha, url: '', message: '', object: { type: 'commit', url: '', sha: commit } });
  } catch {
    return json(res, 400, { message: 'object does not exist' });
  }
};
let calls = 0;
let fault = 0;
const received = [];

const page = (res, u, all) => {
  const limit = Math.max(1, Number(u.searchParams.get('limit') || 30));
  const p = Math.max(1, Number(u.searchParams.get('page') || 1));
  return json(res, 200, all.slice((p - 1) * limit, p * limit));
};

const epoch = '1970-01-01T00:00:00Z';
const actionsLookup = (res, r, full, kind, id) => {
  const a = r.actions || {};
  if (kind === 'jobs') {
    const j = (a.jobs || {})[id];
    if (!j) return json(res, 404, { message: 'The target couldn\'t be found.' });
    const run = (a.runs || {})[String(j.run_id)] || {};
    return json(res, 200, {
      id: Number(id), url: `/api/v1/repos/${full}/actions/jobs/${id}`, html_url: '',
      run_id: j.run_id, run_url: `/api/v1/repos/${full}/actions/runs/${j.run_id}`,
      name: j.name || 'job', labels: ['ubuntu-latest'], run_attempt: j.run_attempt || 1,
      head_sha: j.head_sha, ...(run.head_branch ? { head_branch: run.head_branch } : {}),
      status: j.status, ...(j.status === 'completed' ? { conclusion: j.conclusion || 'success' } : {}),
      runner_id: 1, runner_name: j.runner_name || '', steps: [],
      created_at: '2026-12-07T10:00:00Z', started_at: '2026-12-07T10:00:01Z', completed_at: epoch,
    });
  }
  const run = (a.runs || {})[id];
  if (!run) return json(res, 404, { message: 'The target couldn\'t be found.' });
  return json(res, 200, {
    id: Number(id), url: `/api/v1/repos/${full}/actions/runs/${id}`, html_url: '',
    display_title: 'run', path: run.path, event: run.event || 'push', run_attempt: 0,
    run_number: run.run_number || 1, head_sha: run.head_sha,
    ...(run.head_branch ? { head_branch: run.head_branch } : {}),
    status: run.status || 'in_progress', actor: { id: 1, login: run.actor || '' },
    started_at: '2026-12-07T10:00:00Z', completed_at: epoch,
  });
};

const repoLookup = (res, parts, u) => {
  const [owner, repo, what, id] = parts;
  const full = `${owner}/${repo}`;
  const r = REPOS[full.toLowerCase()];
  if (!r) return json(res, 404, { message: 'repository does not exist' });
  if (what === 'actions/jobs' || what === 'actions/runs') {
    return actionsLookup(res, r, full.toLowerCase(), what.slice('actions/'.length), id);
  }
  if (what === 'tags' && id === undefined) return page(res, u, (r.tags || []).map((name) => ({ name })));
  if (what === 'releases' && id === undefined) {
    return page(res, u, Object.entries(r.releases || {}).map(([rid, tag]) => ({ id: Number(rid), tag_name: tag })));
  }
  if (!what) {
    return json(res, 200, { full_name: full, default_branch: r.default_branch || 'main', empty: Boolean(r.empty) });
  }
  if (what === 'pulls') {
    const p = (r.pulls || {})[id];
    if (!p) return json(res, 404, { message: 'pull request does not exist' });
    const repoOf = (name) => (name === null ? null : { full_name: name || full });
    return json(res, 200, {
      number: Number(id),
      base: { label: p.base, ref: p.base, repo: repoOf(full) },
      head: { label: p.head, ref: p.head, repo: repoOf(p.head_repo) },
      merged: false,
    });
  }
  const tag = (r.releases || {})[id];
  if (!tag) return json(res, 404, { message: 'release does not exist' });
  return json(res, 200, { id: Number(id), tag_name: tag });
};

const json = (res, status, body) => {
  const text = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': text.length });
  res.end(text);
};

const server = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://standin.invalid');
  if (u.pathname === '/_calls') return json(res, 200, { calls });
  if (u.pathname === '/_fault' && req.method === 'POST') {
    fault = Number(u.searchParams.get('status') || 0);
    return json(res, 200, { fault });
  }
  if (u.pathname === '/_received') return json(res, 200, received);
  if (u.pathname === '/_job' && req.method === 'POST') {
    const r = REPOS[(u.searchParams.get('repo') || '').toLowerCase()];
    const j = r && ((r.actions || {}).jobs || {})[u.searchParams.get('job')];
    if (!j) return json(res, 404, { message: 'no such job' });
    j.status = u.searchParams.get('status') || 'completed';
    if (u.searchParams.get('attempt')) j.run_attempt = Number(u.searchParams.get('attempt'));
    return json(res, 200, j);
  }
  const tagLookup = u.pathname.match(/^\/api\/v1\/repos\/([^/]+)\/([^/]+)\/git\/tags\/([^/]+)$/);
  if (tagLookup && req.method === 'GET' && req.headers.authorization === `token ${TOKEN}`) {
    calls += 1;
    if (fault) return json(res, fault, { message: 'injected fault' });
    return annotatedTag(res, `${tagLookup[1]}/${tagLookup[2]}`.toLowerCase(), tagLookup[3]);
  }
  const lookup = u.pathname.match(/^\/api\/v1\/repos\/([^/]+)\/([^/]+)(?:\/(pulls|releases|actions\/jobs|actions\/runs)\/(\d+)|\/(tags|releases))?$/);
  const isLookup = lookup && req.method === 'GET' && req.headers.authorization === `token ${TOKEN}`;
  const m = u.pathname.match(/^\/api\/v1\/user\/(orgs|teams)$/);
  if (!isLookup && !(m && req.method === 'GET')) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({
        method: req.method,
        url: req.url,
        user: req.headers['x-webauth-user'] || null,
        request_id: req.headers['x-request-id'] || null,
        content_type: req.headers['content-type'] || null,
        body: Buffer.concat(chunks).toString('latin1'),
      });
      json(res, 200, { recorded: true });
    });
    return undefined;
  }
  calls += 1;
  if (isLookup) {
    if (fault) return json(res, fault, { message: 'injected fault' });
    const [, owner, repo, what, id, list] = lookup;
    return repoLookup(res, [owner, repo, what || list, id], u);
  }
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
