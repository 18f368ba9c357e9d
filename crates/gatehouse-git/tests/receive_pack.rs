//! Differential test: every crafted command list of `gatehouse_git::corpus` is given to the real
//! `git receive-pack --stateless-rpc` (what `git http-backend` runs for a push; over SSH git reads
//! the same way) in scratch repositories whose hooks record what git read, then decline, so the
//! repositories never change:
//!
//! - an `update` hook, which git runs for each ref it is about to move (after its own checks,
//!   before the move): the refs git acts on, in order. It lets the move happen (declining would
//!   stop an atomic push at its first ref), so each case runs on a fresh copy of the repository. A `pre-receive` hook would not do: with
//!   one installed git checks a push certificate's signature and dies on an unsigned one, while
//!   without hooks (the quickstart) the same push goes through.
//! - a `pre-receive` hook in a second repository, for the push options git read.
//!
//! Gatehouse's reader must name exactly the refs git acts on, in that order, or refuse the
//! request; a refusal is accepted only where git dies or acts on nothing, or where the command
//! list names a ref git itself refuses to update. The transcription of git's code used as the
//! fuzzing oracle (`gatehouse_git::model`) is checked against git the same way.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gatehouse_git::model::{self, Outcome};
use gatehouse_git::{
    ObjectFormat, PushError, PushLimits, corpus, parse_push_request, valid_ref_name,
};

const UPDATE_HOOK: &str = r#"#!/bin/sh
printf '%s %s %s\n' "$2" "$3" "$1" >> "$RECORD_DIR/commands"
"#;

const PRE_RECEIVE_HOOK: &str = r#"#!/bin/sh
cat > /dev/null
i=0
while [ "$i" -lt "${GIT_PUSH_OPTION_COUNT:-0}" ]; do
  eval "printf '%s\n' \"\$GIT_PUSH_OPTION_$i\""
  i=$((i + 1))
done > "$RECORD_DIR/options"
exit 1
"#;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository with one commit on `main` and a recording hook.
fn scratch(root: &Path, name: &str, hook: &str, advertise_push_options: bool) -> (PathBuf, String) {
    let repo = root.join(name);
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(
        &repo,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    let tree = git(&repo, &["hash-object", "-t", "tree", "-w", "--stdin"]);
    let head = git(&repo, &["commit-tree", &tree, "-m", "init"]);
    git(&repo, &["update-ref", "refs/heads/main", &head]);
    git(
        &repo,
        &[
            "config",
            "receive.advertisePushOptions",
            &advertise_push_options.to_string(),
        ],
    );
    let (file, text) = match hook {
        "update" => ("hooks/update", UPDATE_HOOK),
        _ => ("hooks/pre-receive", PRE_RECEIVE_HOOK),
    };
    let hook = repo.join(file);
    std::fs::write(&hook, text).expect("hook");
    Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .expect("chmod");
    (repo, head)
}

type Commands = Vec<(String, String, Vec<u8>)>;

/// What git did with a request.
#[derive(Debug)]
enum Git {
    /// It died before its hook ran.
    Died,
    /// It moved no ref: no commands, none it would move, or its unpacker failed (exit 0).
    NoHook,
    /// Its hook was called for these commands and with these push options.
    Hook(Commands, Vec<Vec<u8>>),
}

/// What git did with `body`, run on a fresh copy of `template`.
fn real_git(template: &Path, record: &Path, body: &[u8]) -> Git {
    let repo = &record.with_extension("git");
    let _ = std::fs::remove_dir_all(repo);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(template)
        .arg(repo)
        .status();
    assert!(
        copied.is_ok_and(|s| s.success()),
        "copy {}",
        template.display()
    );
    let _ = std::fs::remove_dir_all(record);
    std::fs::create_dir_all(record).expect("record dir");
    let mut child = Command::new("git")
        .args(["receive-pack", "--stateless-rpc"])
        .arg(repo)
        .env("RECORD_DIR", record)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git receive-pack runs");
    let mut stdin = child.stdin.take().expect("stdin");
    // git may stop reading early (it died); a broken pipe is part of the outcome.
    let _ = stdin.write_all(body);
    drop(stdin);
    let status = child.wait().expect("wait");
    let options = std::fs::read(record.join("options"));
    let commands = match std::fs::read(record.join("commands")) {
        Ok(c) => c,
        Err(_) if options.is_ok() => Vec::new(),
        Err(_) if status.success() => return Git::NoHook,
        Err(_) => return Git::Died,
    };
    let commands = commands
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, |&b| b == b' ');
            let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("hook line {:?}", String::from_utf8_lossy(l));
            };
            (
                String::from_utf8_lossy(old).into_owned(),
                String::from_utf8_lossy(new).into_owned(),
                name.to_vec(),
            )
        })
        .collect();
    let options = options
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect::<Vec<_>>();
    // `printf '%s\n'` per option: drop the split's empty tail.
    let options = options[..options.len().saturating_sub(1)].to_vec();
    Git::Hook(commands, options)
}

#[test]
fn gatehouse_reads_every_crafted_push_as_git_receive_pack_does() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("receive-pack-differential");
    std::fs::create_dir_all(&root).expect("tmp");
    let version = git(&root, &["--version"]);
    let mut checked = 0;
    for advertise in [true, false] {
        let (repo, head) = scratch(
            &root,
            &format!("update-{advertise}.git"),
            "update",
            advertise,
        );
        let (options_repo, _) = scratch(&root, "options.git", "pre-receive", true);
        let record = root.join("record");
        for case in corpus::cases(&head) {
            let name = format!(
                "{} (push options advertised: {advertise}; {version})",
                case.name
            );
            let theirs = real_git(&repo, &record, &case.body);
            let ours = parse_push_request(&case.body, PushLimits::default());
            let m = model::receive_pack(&case.body, ObjectFormat::Sha1, advertise);
            let model_refs = match &m {
                Outcome::Commands { updates, .. } => updates.clone(),
                Outcome::Dies(_) => Vec::new(),
            };
            // git's `update()` refuses a ref name `check-ref-format` refuses before its hook.
            let movable: Commands = model_refs
                .iter()
                .filter(|(_, _, r)| std::str::from_utf8(r).is_ok_and(valid_ref_name))
                .cloned()
                .collect();

            // The oracle the fuzz target uses says what git says.
            match (&m, &theirs) {
                (Outcome::Dies(_), Git::Died) => {}
                (Outcome::Commands { .. }, Git::NoHook) if movable.is_empty() => {}
                (Outcome::Commands { .. }, Git::Hook(cmds, _)) => {
                    assert_eq!(&movable, cmds, "{name}: model's commands");
                }
                // Push options sent to a repository that does not read them are read as the
                // pack, which fails to unpack: git acts on nothing (the model stops at the pack).
                (
                    Outcome::Commands {
                        push_options: None, ..
                    },
                    Git::NoHook,
                ) if !advertise => {}
                (m, g) => panic!("{name}: the model says {m:?}, git {g:?}"),
            }
            let options = advertise.then(|| real_git(&options_repo, &record, &case.body));
            if let (Some(Git::Hook(_, opts)), Outcome::Commands { push_options, .. }) =
                (options, &m)
            {
                let theirs = push_options.clone().unwrap_or_default();
                assert_eq!(&theirs, &opts, "{name}: model's push options");
                if let Ok(Some((req, _))) = &ours {
                    let mine: Vec<_> = req
                        .push_options
                        .iter()
                        .map(|o| o.as_bytes().to_vec())
                        .collect();
                    assert_eq!(mine, opts, "{name}: push options");
                }
            }

            match (&ours, &theirs) {
                (Ok(Some((req, _))), Git::Hook(cmds, _)) => {
                    let mine: Commands = req
                        .updates
                        .iter()
                        .map(|u| (u.old.clone(), u.new.clone(), u.name.as_bytes().to_vec()))
                        .collect();
                    assert_eq!(
                        &mine, cmds,
                        "{name}: the refs decided are the refs git acts on"
                    );
                }
                (Ok(Some((req, _))), Git::NoHook) => assert!(
                    req.updates.is_empty() || (!advertise && req.features.push_options),
                    "{name}: git acted on nothing, Gatehouse would decide {:?}",
                    req.updates
                ),
                (Ok(Some((req, _))), Git::Died) => {
                    panic!("{name}: git died, Gatehouse would decide {:?}", req.updates)
                }
                (Ok(None), _) => panic!("{name}: Gatehouse waits for more of a whole request"),
                (Err(_), Git::Died | Git::NoHook) => {}
                (Err(e), Git::Hook(cmds, _)) => assert!(
                    *e == PushError::BadRefName && movable.len() < model_refs.len(),
                    "{name}: Gatehouse refuses ({e}) what git acts on: {cmds:?}"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked >= 70, "{checked} cases");
}
