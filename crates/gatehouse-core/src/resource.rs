use std::fmt;

/// A repository on the forge, by owner (user or organisation) and name.
///
/// Names are stored as the forge compares them: lower-cased for Gitea, Forgejo and Gogs, which treat
/// owner and repository names case-insensitively; as given for a case-sensitive (generic) upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoRef {
    /// The user or organisation that owns the repository.
    pub owner: String,
    /// The repository name, without a `.git` suffix.
    pub name: String,
}

impl RepoRef {
    /// `owner/name`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// A user or an organisation on the forge, by name (folded as [`RepoRef`] names are).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerRef {
    /// The user's or organisation's name.
    pub name: String,
}

impl fmt::Display for OwnerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A plain HTTP route: anything that is not a repository or an owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The request's host (without port), lower-cased.
    pub host: String,
    /// The normalized path.
    pub path: String,
    /// The request method, upper-case.
    pub method: String,
}

/// What a request touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A repository on the forge.
    Repo(RepoRef),
    /// A user or an organisation on the forge.
    Owner(OwnerRef),
    /// Any other route.
    Route(Route),
}

impl Resource {
    /// The repository, when the resource is one.
    pub fn repo(&self) -> Option<&RepoRef> {
        match self {
            Resource::Repo(r) => Some(r),
            Resource::Owner(_) | Resource::Route(_) => None,
        }
    }
}

/// Which way a request reaches the forge: policies see it as `context.via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// Git itself: smart or dumb HTTP, LFS, SSH.
    Git,
    /// The forge's web UI.
    Web,
    /// The forge's REST API.
    Api,
}

impl Via {
    /// `git`, `web` or `api`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Via::Git => "git",
            Via::Web => "web",
            Via::Api => "api",
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
