#!/usr/bin/env python3
"""A STAND-IN for Gitea's and Forgejo's OAuth2 introspection endpoint, POST /login/oauth/introspect
(Gitea and Forgejo cannot run on the test machines). It answers as their `IntrospectOAuth` does
(Gitea routers/web/auth/oauth2_provider.go, Forgejo routers/web/auth/oauth.go):

- the client must authenticate with HTTP Basic (client_id:client_secret), the only method they
  take; otherwise 401, `WWW-Authenticate: Basic realm="Gitea OAuth2"`, body `no valid authorization`;
- the form field `token` is looked up (their code parses and verifies the JWT, then loads its grant;
  here, a table of known tokens stands for that); `token_type_hint` is ignored;
- a known, live grant answers `{"active": true, "scope", "username", "iss", "sub", "aud": [client
  id the token was issued to]}`, with no `exp`; anything else `{"active": false}`, status 200.
  Like the real ones, it answers `active` for a refresh token of a live grant too.

Usage: gitea_introspect_standin.py TOKENS.json CLIENT_ID CLIENT_SECRET ISSUER
TOKENS.json maps each token to {"username", "sub", "aud", "scope"}. Prints
`gitea introspect stand-in on PORT`, then one line per request: `introspect <first 12 chars>`.
"""

import base64
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKENS = json.load(open(sys.argv[1], encoding="utf-8"))
CLIENT_ID, CLIENT_SECRET, ISSUER = sys.argv[2], sys.argv[3], sys.argv[4]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json", extra=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path.split("?")[0] != "/login/oauth/introspect":
            return self.reply(404, "not found", "text/plain")
        auth = self.headers.get("Authorization", "")
        ok = False
        if auth.startswith("Basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                ok = cid == CLIENT_ID and secret == CLIENT_SECRET
            except Exception:
                ok = False
        if not ok:
            return self.reply(401, "no valid authorization", "text/plain; charset=utf-8",
                              [("WWW-Authenticate", 'Basic realm="Gitea OAuth2"')])
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        token = (form.get("token") or [""])[0]
        print(f"introspect {token[:12]}", flush=True)
        t = TOKENS.get(token)
        if t is None:
            return self.reply(200, json.dumps({"active": False}))
        body = {"active": True}
        if t.get("scope"):
            body["scope"] = t["scope"]
        body["username"] = t["username"]
        body["iss"] = ISSUER
        body["sub"] = t["sub"]
        body["aud"] = [t["aud"]]
        return self.reply(200, json.dumps(body))


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"gitea introspect stand-in on {server.server_address[1]}", flush=True)
server.serve_forever()
