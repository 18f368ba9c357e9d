use std::fmt;
use std::str::FromStr;

/// What a request wants to do, in the forge's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Clone, fetch, ls-remote (upload-pack) and dumb-HTTP reads.
    GitRead,
    /// Push (receive-pack).
    GitWrite,
    /// Download LFS objects.
    LfsRead,
    /// Upload LFS objects, manage locks.
    LfsWrite,
    /// An instance-level forge REST API route (not about one repository or owner) with a safe
    /// method (GET, HEAD, OPTIONS); any API route of a generic upstream.
    ApiRead,
    /// The same with any other method.
    ApiWrite,
    /// An instance-level web page of a forge (sign-in, explore, admin panel, the signed-in user's
    /// own settings), any method; any other route of a generic upstream.
    WebAccess,
    /// Views a repository in the web UI or over the REST API: code, raw files, archives, history,
    /// issues and pull requests, releases, wiki, feeds.
    RepoRead,
    /// Changes a repository's data without moving a ref of its Git repository: issues, comments,
    /// labels, reviews, wiki edits, stars and watches.
    RepoWrite,
    /// Administers a repository: settings, collaborators, hooks, deploy keys, protection rules,
    /// transfer, delete, Actions secrets.
    RepoAdmin,
    /// Views a user's or an organisation's pages.
    OwnerRead,
    /// Changes a user's or an organisation's data short of administering it.
    OwnerWrite,
    /// Administers a user or an organisation: settings, members, teams, hooks.
    OwnerAdmin,
    /// One ref created by a push (checked for each ref, after `git:write`).
    RefCreate,
    /// One ref moved by a push.
    RefUpdate,
    /// One ref deleted by a push.
    RefDelete,
}

impl Action {
    /// Every action, in a stable order.
    pub const ALL: [Action; 16] = [
        Action::GitRead,
        Action::GitWrite,
        Action::LfsRead,
        Action::LfsWrite,
        Action::ApiRead,
        Action::ApiWrite,
        Action::WebAccess,
        Action::RepoRead,
        Action::RepoWrite,
        Action::RepoAdmin,
        Action::OwnerRead,
        Action::OwnerWrite,
        Action::OwnerAdmin,
        Action::RefCreate,
        Action::RefUpdate,
        Action::RefDelete,
    ];

    /// The action's name as policies and audit records spell it (`git:read`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::GitRead => "git:read",
            Action::GitWrite => "git:write",
            Action::LfsRead => "lfs:read",
            Action::LfsWrite => "lfs:write",
            Action::ApiRead => "api:read",
            Action::ApiWrite => "api:write",
            Action::WebAccess => "web:access",
            Action::RepoRead => "repo:read",
            Action::RepoWrite => "repo:write",
            Action::RepoAdmin => "repo:admin",
            Action::OwnerRead => "owner:read",
            Action::OwnerWrite => "owner:write",
            Action::OwnerAdmin => "owner:admin",
            Action::RefCreate => "ref:create",
            Action::RefUpdate => "ref:update",
            Action::RefDelete => "ref:delete",
        }
    }

    /// Whether the action may change state on the forge (the admin actions included: their
    /// pages are read with GET, their forms change settings).
    pub const fn is_write(self) -> bool {
        matches!(
            self,
            Action::GitWrite
                | Action::LfsWrite
                | Action::ApiWrite
                | Action::RepoWrite
                | Action::RepoAdmin
                | Action::OwnerWrite
                | Action::OwnerAdmin
                | Action::RefCreate
                | Action::RefUpdate
                | Action::RefDelete
        )
    }

    /// Whether a request classified as this action, with this method, may change what the forge
    /// holds: a method other than GET, HEAD or OPTIONS on a write action or a web or plain route
    /// (a push, an LFS upload, an API write, a form post in the web UI, a call to a generic
    /// upstream). A request that the forge's routes say only reads (`repo:read`, a search posted
    /// as a form) is not one, whatever its method. The gateway makes the audit record of such a request durable before forwarding
    /// it. A push's ref advertisement (`GET .../info/refs?service=git-receive-pack`, `git:write`)
    /// changes nothing: Gitea answers it for a repository that does not exist yet with a dummy
    /// advertisement and creates one (push-to-create) only on the POST.
    pub fn may_change_forge(self, method: &str) -> bool {
        !matches!(method, "GET" | "HEAD" | "OPTIONS")
            && (self.is_write() || self == Action::WebAccess)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action name that Gatehouse does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown action `{0}` (expected one of git:read, git:write, lfs:read, lfs:write, repo:read, repo:write, repo:admin, owner:read, owner:write, owner:admin, api:read, api:write, web:access, ref:create, ref:update, ref:delete)"
)]
pub struct ParseActionError(pub String);

impl FromStr for Action {
    type Err = ParseActionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ParseActionError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        assert!("git:admin".parse::<Action>().is_err());
    }

    #[test]
    fn what_may_change_the_forge() {
        assert!(Action::GitWrite.may_change_forge("POST"));
        assert!(
            !Action::GitWrite.may_change_forge("GET"),
            "a push's advertisement"
        );
        assert!(Action::LfsWrite.may_change_forge("PUT"));
        assert!(Action::ApiWrite.may_change_forge("DELETE"));
        assert!(Action::WebAccess.may_change_forge("POST"));
        assert!(Action::RepoWrite.may_change_forge("POST"));
        assert!(Action::RepoAdmin.may_change_forge("POST"));
        assert!(
            !Action::RepoAdmin.may_change_forge("GET"),
            "a settings page"
        );
        assert!(
            !Action::RepoRead.may_change_forge("POST"),
            "a preview the forge says writes nothing"
        );
        assert!(!Action::WebAccess.may_change_forge("GET"));
        assert!(!Action::GitRead.may_change_forge("POST"), "a fetch");
        assert!(
            !Action::LfsRead.may_change_forge("POST"),
            "a download batch"
        );
    }
}
