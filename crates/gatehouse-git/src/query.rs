//! The credentials a forge reads from a request's query string, so that only the identity
//! Gatehouse asserts reaches it.
//!
//! Gitea and Forgejo (`services/auth/oauth2.go` `parseToken`, `services/auth/basic.go`) read an
//! access token from `?token=` and `?access_token=` before the reverse-proxy header, and an admin
//! token acts as another user named by `?sudo=` (or the `Sudo` header, see `gatehouse-http`'s
//! header hygiene); Gogs reads `?token=`. Go's `url.ParseQuery` splits on `&`, percent-decodes
//! keys (`+` as a space) and compares them exactly, so `%74oken=` is `token` and `Token=` is not.

use std::borrow::Cow;

/// Query parameters a forge takes as a credential or an identity.
const CREDENTIAL_PARAMS: [&str; 3] = ["token", "access_token", "sudo"];

/// `query` without the parameters a forge would read as a credential: borrowed when there were
/// none, `None` when nothing is left.
pub fn without_forge_credentials(query: &str) -> Option<Cow<'_, str>> {
    let is_credential = |pair: &str| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        // A bad escape makes Go skip the pair: no credential.
        crate::classify::form_decode(key).is_ok_and(|k| CREDENTIAL_PARAMS.contains(&k.as_str()))
    };
    if !query.split('&').any(is_credential) {
        return (!query.is_empty()).then_some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_credential(p)).collect();
    let kept = kept.join("&");
    (!kept.is_empty()).then_some(Cow::Owned(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(q: &str) -> Option<String> {
        without_forge_credentials(q).map(Cow::into_owned)
    }

    #[test]
    fn credentials_go_whatever_their_spelling_go_reads() {
        assert_eq!(strip("token=abc"), None);
        assert_eq!(
            strip("state=open&token=abc&page=2"),
            Some("state=open&page=2".into())
        );
        assert_eq!(strip("access_token=x&sudo=admin&q=1"), Some("q=1".into()));
        assert_eq!(strip("%74oken=x&q=1"), Some("q=1".into()));
        assert_eq!(strip("access%5Ftoken=x"), None);
        assert_eq!(strip("sudo"), None, "a key without a value is still read");
        assert_eq!(strip("token=a&token=b"), None);
    }

    #[test]
    fn everything_else_is_kept_as_it_came() {
        assert!(matches!(
            without_forge_credentials("state=open&page=2"),
            Some(Cow::Borrowed("state=open&page=2"))
        ));
        // Go compares keys exactly: these are not the credential parameters.
        assert_eq!(
            strip("Token=x&tokens=y&my_token=z"),
            Some("Token=x&tokens=y&my_token=z".into())
        );
        // A bad escape makes Go skip the pair: harmless, kept.
        assert_eq!(strip("%zzoken=x"), Some("%zzoken=x".into()));
        assert_eq!(strip(""), None);
        assert_eq!(strip("a=1&&b=2"), Some("a=1&&b=2".into()));
    }
}
