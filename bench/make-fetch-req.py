#!/usr/bin/env python3
"""Write the request body of a Git protocol-v2 `fetch` that wants every branch and tag of a
repository: what a fresh clone asks for. With it a smart-HTTP server can be measured by curl
alone, without the client-side `index-pack` that dominates a real clone on a small machine.

usage: make-fetch-req.py GIT_DIR OUT_FILE

Send it with:
  curl --data-binary @OUT_FILE -H 'Git-Protocol: version=2' \
       -H 'Content-Type: application/x-git-upload-pack-request' URL/<repo>.git/git-upload-pack
"""
import subprocess
import sys


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", git_dir, *args], check=True, capture_output=True, text=True
    ).stdout


def pkt(payload: bytes) -> bytes:
    """One pkt-line: four hex digits of total length (including themselves), then the payload."""
    return b"%04x" % (len(payload) + 4) + payload


FLUSH = b"0000"
DELIM = b"0001"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    git_dir, out = sys.argv[1], sys.argv[2]
    tips = sorted(
        set(git(git_dir, "for-each-ref", "--format=%(objectname)", "refs/heads", "refs/tags").split())
    )
    if not tips:
        print(f"make-fetch-req: no branches or tags in {git_dir}", file=sys.stderr)
        return 1
    object_format = git(git_dir, "rev-parse", "--show-object-format").strip() or "sha1"

    body = bytearray()
    body += pkt(b"command=fetch\n")
    body += pkt(b"object-format=" + object_format.encode() + b"\n")
    body += DELIM
    for arg in (b"thin-pack\n", b"ofs-delta\n", b"no-progress\n"):
        body += pkt(arg)
    for oid in tips:
        body += pkt(b"want " + oid.encode() + b"\n")
    body += pkt(b"done\n")
    body += FLUSH

    with open(out, "wb") as f:
        f.write(body)
    print(f"make-fetch-req: {len(tips)} wants, {len(body)} bytes -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
