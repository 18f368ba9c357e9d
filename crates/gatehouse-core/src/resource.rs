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

/// A plain HTTP route: anything that is not a repository.
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
    /// Any other route.
    Route(Route),
}

impl Resource {
    /// The repository, when the resource is one.
    pub fn repo(&self) -> Option<&RepoRef> {
        match self {
            Resource::Repo(r) => Some(r),
            Resource::Route(_) => None,
        }
    }
}
