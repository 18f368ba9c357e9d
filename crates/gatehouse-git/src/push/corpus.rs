//! Crafted receive-pack requests, shared by the unit tests (against [`super::model`]) and the
//! differential test against the real `git receive-pack` (`tests/receive_pack.rs`): the ways a
//! command list can be spelled that a line-by-line reading gets wrong. Test data, not used at run
//! time.

/// An empty pack (`git pack-objects --stdout < /dev/null`): version 2, no objects, and the SHA-1
/// of those twelve bytes.
pub const EMPTY_PACK: &[u8] = b"PACK\x00\x00\x00\x02\x00\x00\x00\x00\x02\x9d\x08\x82\x3b\xd8\xa8\xea\xb5\x10\xad\x6a\xc7\x5c\x82\x3c\xfd\x3e\xd3\x1e";

/// The all-zero SHA-1 id.
pub const ZERO: &str = "0000000000000000000000000000000000000000";

/// One crafted request.
#[derive(Debug, Clone)]
pub struct Case {
    /// What it tries.
    pub name: &'static str,
    /// The request body.
    pub body: Vec<u8>,
}

/// A pkt-line of `payload`.
pub fn pkt(payload: impl AsRef<[u8]>) -> Vec<u8> {
    let p = payload.as_ref();
    let mut out = format!("{:04x}", p.len() + 4).into_bytes();
    out.extend_from_slice(p);
    out
}

const FLUSH: &[u8] = b"0000";

fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The cases, for a repository whose branch `refs/heads/main` points at `head` (a SHA-1 id of
/// a commit it has; new refs point there so that git's connectivity check passes).
pub fn cases(head: &str) -> Vec<Case> {
    let z = ZERO;
    let h = head;
    let up = head.to_ascii_uppercase();
    let cmd = |old: &str, new: &str, r: &str| format!("{old} {new} {r}");
    let mut cases = vec![
        Case {
            name: "a plain push with capabilities",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status side-band-64k atomic object-format=sha1 agent=git/2.47\n",
                    cmd(z, h, "refs/heads/plain")
                )),
                &pkt(format!("{}\n", cmd(z, h, "refs/tags/plain-tag"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "the issue's certificate: a command without LF, then a lone LF",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("certificate version 0.1\n"),
                &pkt("pusher m 1700000000 +0000\n"),
                &pkt("nonce x\n\n"),
                &pkt(cmd(z, h, "refs/tags/v7.7.7")),
                &pkt("\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/feature-cert"))),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a certificate whose blank line is an empty 0004 packet and an LF",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("certificate version 0.1\n"),
                &pkt("nonce x\n"),
                b"0004",
                &pkt("\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/tags/v0004"))),
                b"0004",
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/after-0004"))),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a certificate with 0004 where a line reader sees the blank line",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("certificate version 0.1\n"),
                b"0004",
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/not-a-command"))),
                &pkt("nonce y\n\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/tags/v-hidden"))),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "an empty 0004 packet among the commands",
            body: body(&[
                &pkt(format!("{}\0report-status\n", cmd(z, h, "refs/heads/a"))),
                b"0004",
                &pkt(format!("{}\n", cmd(z, h, "refs/tags/v0"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "commands without LF",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status",
                    cmd(z, h, "refs/heads/no-lf-1")
                )),
                &pkt(cmd(z, h, "refs/heads/no-lf-2")),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "features end at the second NUL: no push options are read",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status\0 push-options\n",
                    cmd(h, z, "refs/heads/second-nul")
                )),
                FLUSH,
            ]),
        },
        Case {
            name: "a ref name ends at a NUL, what follows is a feature list",
            body: body(&[
                &pkt(format!("{}\0report-status\n", cmd(z, h, "refs/heads/n1"))),
                &pkt(format!(
                    "{}\0refs/tags/v9 push-options\n",
                    cmd(z, h, "refs/heads/n2")
                )),
                FLUSH,
                &pkt("opt-from-second-block\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a second feature block asks for push options",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status\n",
                    cmd(z, h, "refs/heads/second-1")
                )),
                &pkt(format!(
                    "{}\0push-options\n",
                    cmd(z, h, "refs/heads/second-2")
                )),
                FLUSH,
                &pkt("ci.skip\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/tags/v-in-options"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "push options with the capability",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status push-options\n",
                    cmd(z, h, "refs/heads/with-options")
                )),
                FLUSH,
                &pkt("ci.skip\n"),
                &pkt("reviewer=alice"),
                b"0004",
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a delete-only push with option-like lines but no capability",
            body: body(&[
                &pkt(format!("{}\0report-status\n", cmd(h, z, "refs/heads/gone"))),
                FLUSH,
                &pkt(format!("{}\n", cmd(h, z, "refs/tags/v-not-read"))),
                FLUSH,
            ]),
        },
        Case {
            name: "a feature that only contains push-options as a substring",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status no-push-options push-optionsx\n",
                    cmd(h, z, "refs/heads/sub")
                )),
                FLUSH,
            ]),
        },
        Case {
            name: "shallow lines before, between and with features",
            body: body(&[
                &pkt(format!("shallow {h}\n")),
                &pkt(format!("{}\0report-status\n", cmd(z, h, "refs/heads/sh1"))),
                &pkt(format!("shallow {h}\0push-options\n")),
                &pkt(format!("shallow {h}trailing\n")),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/sh2"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a shallow line with a bad id",
            body: body(&[
                &pkt(format!("shallow {}\n", &h[..39])),
                &pkt(format!("{}\0report-status\n", cmd(z, h, "refs/heads/sh3"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a bare 'shallow ' line is a command",
            body: body(&[&pkt("shallow \n"), FLUSH, EMPTY_PACK]),
        },
        Case {
            name: "a signed certificate: lines inside the signature are not commands",
            body: body(&[
                &pkt("push-cert\0report-status side-band-64k\n"),
                &pkt("certificate version 0.1\n"),
                &pkt("pusher Alice <a@x> 1700000000 +0000\n"),
                &pkt("pushee https://git.example/demo/hello.git\n"),
                &pkt("nonce 1700000000-abc\n"),
                &pkt("\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/signed"))),
                &pkt("-----BEGIN PGP SIGNATURE-----\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/in-signature"))),
                &pkt("-----END PGP SIGNATURE-----\n"),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "an SSH-signed certificate with two signature headers: the last one counts",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("certificate version 0.1\n"),
                &pkt("nonce 1\n"),
                &pkt("\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/s1"))),
                &pkt("-----BEGIN SSH SIGNATURE-----\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/s2"))),
                &pkt("-----BEGIN PGP SIGNATURE-----\n"),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a signature header before the blank line: no commands from the certificate",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("-----BEGIN PGP SIGNATURE-----\n"),
                &pkt("\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/after-sig"))),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a certificate without a blank line",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/nocert"))),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a flush inside the certificate ends the list",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("nonce 1\n\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/cert-flush"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a delimiter inside the certificate",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("nonce 1\n\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/cert-delim"))),
                b"0001",
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "unsigned commands, then a certificate's: both are queued",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status\n",
                    cmd(z, h, "refs/heads/unsigned")
                )),
                &pkt("push-cert\n"),
                &pkt("nonce 1\n\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/tags/v-cert"))),
                &pkt("push-cert-end\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/after-cert"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "two certificates append to one",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("nonce 1\n"),
                &pkt("push-cert-end\n"),
                &pkt("push-cert\n"),
                &pkt("\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/two-certs"))),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a NUL inside a certificate line cuts it",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("nonce 1\n\n"),
                &pkt(format!(
                    "{}\0{}\n",
                    cmd(z, h, "refs/heads/cut"),
                    "\nignored"
                )),
                &pkt(format!("\n{}\n", cmd(z, h, "refs/heads/cut2"))),
                &pkt("push-cert-end\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "push-cert-end followed by a NUL still ends the certificate",
            body: body(&[
                &pkt("push-cert\0report-status\n"),
                &pkt("nonce 1\n\n"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/pce"))),
                &pkt("push-cert-end\n\0more"),
                &pkt(format!("{}\n", cmd(z, h, "refs/heads/after-pce"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a delimiter ends the list like a flush",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status\n",
                    cmd(h, z, "refs/heads/delim")
                )),
                b"0001",
                &pkt(format!("{}\n", cmd(h, z, "refs/tags/after-delim"))),
                FLUSH,
            ]),
        },
        Case {
            name: "zero to zero deletes",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status\n",
                    cmd(z, z, "refs/heads/zero-zero")
                )),
                FLUSH,
            ]),
        },
        Case {
            name: "upper-case ids",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status\n",
                    cmd(z, &up, "refs/heads/upper")
                )),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "an error packet",
            body: body(&[
                &pkt(format!("{}\0report-status\n", cmd(z, h, "refs/heads/e1"))),
                &pkt("ERR stop\n"),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a funny ref name",
            body: body(&[
                &pkt(format!("{}\0report-status\n", cmd(z, h, "refs/heads/a..b"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a declared SHA-256 on a SHA-1 repository",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status object-format=sha256\n",
                    cmd(z, h, "refs/heads/s256")
                )),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "an unknown object format",
            body: body(&[
                &pkt(format!(
                    "{}\0report-status object-format=md5\n",
                    cmd(z, h, "refs/heads/md5")
                )),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a command with a space in the ref",
            body: body(&[
                &pkt(format!("{}\0report-status\n", cmd(z, h, "refs/heads/a b"))),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
        Case {
            name: "a bad length",
            body: body(&[b"00zz", FLUSH]),
        },
        Case {
            name: "an up-to-date push: only a flush",
            body: FLUSH.to_vec(),
        },
        Case {
            name: "a payload of the largest size git reads",
            body: body(&[
                &pkt({
                    let mut line = format!("{}\0report-status ", cmd(z, h, "refs/heads/big"));
                    line.push_str(&"x".repeat(65519 - 1 - line.len()));
                    line.push('\n');
                    line
                }),
                FLUSH,
                EMPTY_PACK,
            ]),
        },
    ];
    let mut many = pkt(format!(
        "{}\0report-status\n",
        cmd(z, h, "refs/heads/many/0")
    ));
    for i in 1..3000 {
        many.extend_from_slice(&pkt(format!(
            "{}\n",
            cmd(z, h, &format!("refs/heads/many/{i}"))
        )));
    }
    many.extend_from_slice(FLUSH);
    many.extend_from_slice(EMPTY_PACK);
    cases.push(Case {
        name: "thousands of commands",
        body: many,
    });
    cases
}
