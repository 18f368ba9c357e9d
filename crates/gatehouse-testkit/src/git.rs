use std::path::{Path, PathBuf};
use std::process::Command;

/// The outcome of one `git` command.
#[derive(Debug)]
pub struct GitOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A `git` client with an isolated home: no user or system config, no prompts.
#[derive(Clone)]
pub struct Git {
    home: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Git {
    pub fn new(home: &Path) -> Self {
        std::fs::create_dir_all(home).expect("git home");
        Self {
            home: home.to_owned(),
            extra_env: Vec::new(),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.extra_env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn run(&self, cwd: &Path, args: &[&str]) -> GitOutput {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(cwd)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.test")
            .env("GIT_COMMITTER_NAME", "Test Author")
            .env("GIT_COMMITTER_EMAIL", "author@example.test")
            .env_remove("GIT_DIR");
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run git");
        GitOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Runs and panics with git's output when it fails.
    pub fn ok(&self, cwd: &Path, args: &[&str]) -> GitOutput {
        let o = self.run(cwd, args);
        assert!(
            o.ok,
            "git {} failed:\n{}\n{}",
            args.join(" "),
            o.stdout,
            o.stderr
        );
        o
    }
}

/// Creates `root/owner/name.git`, a bare repository with one commit on `main`; returns that
/// commit's id.
pub fn make_repo(root: &Path, owner: &str, name: &str) -> String {
    let bare = root.join(owner).join(format!("{name}.git"));
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    let git = Git::new(&root.join(".home"));
    let bare_s = bare.to_string_lossy().to_string();
    git.ok(root, &["init", "-q", "--bare", "-b", "main", &bare_s]);
    let work = root.join(format!(".seed-{owner}-{name}"));
    git.ok(root, &["init", "-q", "-b", "main", &work.to_string_lossy()]);
    std::fs::write(work.join("README"), format!("{owner}/{name}\n")).unwrap();
    git.ok(&work, &["add", "README"]);
    git.ok(&work, &["commit", "-qm", &format!("seed {owner}/{name}")]);
    git.ok(&work, &["push", "-q", &bare_s, "main"]);
    let head = git
        .ok(&work, &["rev-parse", "HEAD"])
        .stdout
        .trim()
        .to_owned();
    let _ = std::fs::remove_dir_all(&work);
    head
}
