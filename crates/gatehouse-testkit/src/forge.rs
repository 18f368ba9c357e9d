use std::path::PathBuf;
use std::process::Command;

use crate::proc::{Child, TempDir, raw_http};

/// A STAND-IN for the Gitea/Forgejo API calls Gatehouse makes (forge groups; the pull request,
/// release and default-branch lookups of ref-moving routes) and for the forge behind the gateway,
/// recording what reaches it (`idp/forge-standin.mjs`): no real Gitea can be installed from this
/// machine's registries. Named as such wherever used.
pub struct ForgeStandIn {
    pub port: u16,
    pub token: String,
    _child: Child,
    _dir: TempDir,
}

impl ForgeStandIn {
    /// `users`: `{"alice": {"orgs": ["acme"], "teams": [["acme", "release"]]}}`.
    pub fn start(users: &serde_json::Value) -> Self {
        Self::start_with(users, &serde_json::json!({}))
    }

    /// With repositories to answer lookups for: `{"acme/api": {"default_branch": "main",
    /// "pulls": {"7": {"base": "main", "head": "feature", "head_repo": "acme/api"}},
    /// "releases": {"4": "v1.0"}}}`.
    pub fn start_with(users: &serde_json::Value, repos: &serde_json::Value) -> Self {
        Self::start_over(users, repos, None)
    }

    /// [`Self::start_with`], answering annotated tag lookups from the real repositories under
    /// `git_root` (`<root>/<owner>/<repo>.git`).
    pub fn start_over(
        users: &serde_json::Value,
        repos: &serde_json::Value,
        git_root: Option<&std::path::Path>,
    ) -> Self {
        let dir = TempDir::new("forge-standin");
        let token = "forge-admin-token".to_owned();
        let mut cmd = Command::new("node");
        cmd.arg("forge-standin.mjs")
            .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("idp"))
            .env("STANDIN_PORT", "0")
            .env("STANDIN_TOKEN", &token)
            .env("STANDIN_USERS", users.to_string())
            .env("STANDIN_REPOS", repos.to_string())
            .env("STANDIN_EXIT_WITH_PARENT", "1");
        if let Some(root) = git_root {
            cmd.env("STANDIN_GIT_ROOT", root);
        }
        let mut child = Child::spawn("forge-standin", &mut cmd, &dir.path().join("standin.log"));
        let port = child.wait_logged_port("the forge stand-in to listen", "forge stand-in on ");
        Self {
            port,
            token,
            _child: child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// API calls answered so far.
    pub fn calls(&self) -> u64 {
        let (_, raw) = raw_http(self.port, "GET", "/_calls", &[]);
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
        v["calls"].as_u64().unwrap_or(0)
    }

    /// The requests that reached the stand-in as the forge (not its API lookups), in order.
    pub fn received(&self) -> Vec<serde_json::Value> {
        let (_, raw) = raw_http(self.port, "GET", "/_received", &[]);
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body.trim()).unwrap_or_default()
    }

    /// FAULT INJECTION: every API call answers `status` (0 clears it).
    pub fn fail_with(&self, status: u16) {
        raw_http(self.port, "POST", &format!("/_fault?status={status}"), &[]);
    }
}
