//! The command an SSH client asks a Git server to run (`git-upload-pack '/org/repo.git'`),
//! parsed and normalized exactly like an HTTP path, so that the same policy decides both.
//! Attacker-controlled bytes: fuzzed (`fuzz/fuzz_targets/ssh_command.rs`).

use gatehouse_core::{Action, RepoRef};

use crate::classify::{ForgeFlavor, repo_ref};
use crate::path::{PathError, normalize_path};

/// The Git service an SSH exec request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SshService {
    /// `git-upload-pack`: clone and fetch.
    UploadPack,
    /// `git-receive-pack`: push.
    ReceivePack,
    /// `git-upload-archive`: `git archive --remote`.
    UploadArchive,
}

impl SshService {
    /// The program name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SshService::UploadPack => "git-upload-pack",
            SshService::ReceivePack => "git-receive-pack",
            SshService::UploadArchive => "git-upload-archive",
        }
    }

    /// The action the policy is asked about.
    pub const fn action(self) -> Action {
        match self {
            SshService::UploadPack | SshService::UploadArchive => Action::GitRead,
            SshService::ReceivePack => Action::GitWrite,
        }
    }
}

/// A parsed SSH exec command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshCommand {
    /// Which service.
    pub service: SshService,
    /// The repository, named as for HTTP (case-folded for Gitea, Forgejo and Gogs).
    pub repo: RepoRef,
    /// The repository's wiki.
    pub wiki: bool,
}

impl SshCommand {
    /// The command to run upstream, quoted the way git quotes it.
    pub fn upstream_command(&self) -> String {
        let name = if self.wiki {
            format!("{}.wiki", self.repo.name)
        } else {
            self.repo.name.clone()
        };
        format!(
            "{} '/{}/{name}.git'",
            self.service.as_str(),
            self.repo.owner
        )
    }
}

/// Why a command was refused; the message is what the SSH client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SshCommandError {
    /// Not one of the Git services (a shell, `ls`, `scp`, ...).
    #[error("Gatehouse only runs git-upload-pack, git-receive-pack and git-upload-archive")]
    NotGit,
    /// Quoting Gatehouse does not read the way a shell would.
    #[error("the repository path is not quoted the way git quotes it")]
    BadQuoting,
    /// More than one argument, or none.
    #[error("expected exactly one repository path")]
    BadArguments,
    /// The path does not name `owner/repo` (or `~owner/repo`).
    #[error("the repository path must be owner/repo: {0}")]
    BadPath(PathError),
}

/// Splits a command line the way `sh` would for the forms git sends: words separated by spaces,
/// each bare or made of `'...'` runs joined by `\'` or `\!` (git's `sq_quote`), or `"..."`.
fn words(cmd: &str) -> Result<Vec<String>, SshCommandError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err(SshCommandError::BadQuoting),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\' | '$' | '`') => return Err(SshCommandError::BadQuoting),
                        Some(ch) => cur.push(ch),
                        None => return Err(SshCommandError::BadQuoting),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(ch @ ('\'' | '!')) => {
                    in_word = true;
                    cur.push(ch);
                }
                _ => return Err(SshCommandError::BadQuoting),
            },
            c if c.is_control() => return Err(SshCommandError::BadQuoting),
            // Shell metacharacters never appear in what git sends.
            ';' | '&' | '|' | '<' | '>' | '$' | '`' | '(' | ')' | '*' | '?' | '[' | '{' | '}' => {
                return Err(SshCommandError::BadQuoting);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Parses an SSH exec command: `git-upload-pack '<repo>'`, `git-receive-pack '<repo>'`,
/// `git-upload-archive '<repo>'` (also `git upload-pack ...`). The repository is `owner/repo`,
/// `/owner/repo` or `~owner/repo`, with or without `.git`, normalized as an HTTP path is.
pub fn parse_ssh_command(flavor: ForgeFlavor, cmd: &str) -> Result<SshCommand, SshCommandError> {
    if cmd.len() > 4096 {
        return Err(SshCommandError::BadArguments);
    }
    let w = words(cmd)?;
    let (program, args) = match w.as_slice() {
        [git, sub, rest @ ..] if git == "git" => (format!("git-{sub}"), rest),
        [program, rest @ ..] => (program.clone(), rest),
        [] => return Err(SshCommandError::NotGit),
    };
    let service = match program.as_str() {
        "git-upload-pack" => SshService::UploadPack,
        "git-receive-pack" => SshService::ReceivePack,
        "git-upload-archive" => SshService::UploadArchive,
        _ => return Err(SshCommandError::NotGit),
    };
    let [path] = args else {
        return Err(SshCommandError::BadArguments);
    };
    let path = path.strip_prefix('~').unwrap_or(path);
    let path = path.strip_prefix('/').unwrap_or(path);
    // The same normalization as for HTTP, on a path made absolute.
    let normalized = normalize_path(&format!("/{path}")).map_err(SshCommandError::BadPath)?;
    let segs = normalized.segments();
    let [owner, repo] = segs else {
        return Err(SshCommandError::BadPath(PathError::BadRepoName));
    };
    let (repo, wiki) = repo_ref(flavor, owner, repo).map_err(SshCommandError::BadPath)?;
    Ok(SshCommand {
        service,
        repo,
        wiki,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(cmd: &str) -> SshCommand {
        parse_ssh_command(ForgeFlavor::Gitea, cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    fn repo(o: &str, n: &str) -> RepoRef {
        RepoRef {
            owner: o.into(),
            name: n.into(),
        }
    }

    #[test]
    fn the_forms_git_and_forges_use() {
        for cmd in [
            "git-upload-pack '/demo/hello.git'",
            "git-upload-pack 'demo/hello.git'",
            "git-upload-pack '/demo/hello'",
            "git-upload-pack demo/hello.git",
            "git upload-pack '/demo/hello.git'",
            "git-upload-pack \"/demo/hello.git\"",
            "git-upload-pack '~demo/hello.git'",
            "git-upload-pack '/Demo/HELLO.git'",
            "git-upload-pack  '//demo/./hello.git' ",
        ] {
            let c = ok(cmd);
            assert_eq!(
                (c.service, &c.repo),
                (SshService::UploadPack, &repo("demo", "hello")),
                "{cmd}"
            );
        }
        let push = ok("git-receive-pack 'demo/hello.git'");
        assert_eq!(push.service.action(), Action::GitWrite);
        assert_eq!(
            push.upstream_command(),
            "git-receive-pack '/demo/hello.git'"
        );
        assert_eq!(
            ok("git-upload-archive 'demo/hello.git'").service.action(),
            Action::GitRead
        );
        let wiki = ok("git-upload-pack 'demo/hello.wiki.git'");
        assert!(wiki.wiki);
        assert_eq!(
            wiki.upstream_command(),
            "git-upload-pack '/demo/hello.wiki.git'"
        );
        // git's sq_quote of a name with a quote in it: refused as a repository name, not a crash
        assert!(
            parse_ssh_command(ForgeFlavor::Gitea, r"git-upload-pack 'demo/it'\''s.git'").is_err()
        );
    }

    #[test]
    fn traversal_resolves_or_is_refused() {
        assert_eq!(
            ok("git-upload-pack 'demo/../secret/repo.git'").repo,
            repo("secret", "repo")
        );
        assert!(matches!(
            parse_ssh_command(ForgeFlavor::Gitea, "git-upload-pack '../../etc/passwd'"),
            Err(SshCommandError::BadPath(_))
        ));
        assert!(matches!(
            parse_ssh_command(
                ForgeFlavor::Gitea,
                "git-upload-pack '/srv/git/demo/hello.git'"
            ),
            Err(SshCommandError::BadPath(_))
        ));
        assert!(matches!(
            parse_ssh_command(ForgeFlavor::Gitea, "git-upload-pack 'demo%2Fsecret/x.git'"),
            Err(SshCommandError::BadPath(_))
        ));
    }

    #[test]
    fn anything_else_is_refused() {
        for cmd in [
            "",
            "ls",
            "sh -c 'id'",
            "scp -t /tmp",
            "git-upload-pack",
            "git-upload-pack 'a/b.git' 'c/d.git'",
            "git-upload-pack 'a/b.git'; rm -rf /",
            "git-upload-pack 'a/b.git",
            "git-upload-pack $(id)",
            "git-upload-pack `id`",
            "git-upload-pack \"a/$HOME.git\"",
            "git-upload-pack 'a/b.git'\n",
            "git-shell -c 'git-upload-pack a/b.git'",
            "git upload-pack",
            "git-upload-pack a\\b",
        ] {
            assert!(
                parse_ssh_command(ForgeFlavor::Gitea, cmd).is_err(),
                "{cmd:?}"
            );
        }
        assert_eq!(
            parse_ssh_command(ForgeFlavor::Gitea, "bash"),
            Err(SshCommandError::NotGit)
        );
    }
}
