//! The fields of a forge's web form, read as the forge reads them. A handler reads a field one of
//! two ways, and they differ:
//! - **bound** into its form struct by go-chi/binding (Gitea, Forgejo; macaron's binding in Gogs
//!   does the same), which picks a decoder by looking for `form-urlencoded`, then
//!   `multipart/form-data`, then `json` in the `Content-Type` as sent (case-sensitively): the
//!   first binds `Request.Form` after `ParseForm` (a POST, PUT or PATCH body whose media type is
//!   `application/x-www-form-urlencoded`, then the URL query), the second the multipart parts
//!   alone (not the query), the third a JSON body (refused here:
//!   [`FormError::UnsupportedBody`]); any other type binds nothing, and the handler runs with an
//!   empty form;
//! - **`FormValue`** (`ctx.FormString`): `Request.Form` after `ParseMultipartForm`, by media type:
//!   `ParseForm`'s fields, then, for `multipart/form-data`, the parts'.
//!
//! Both are kept ([`Form::bound`], [`Form::one`]); the caller asks the way the handler reads.
//! Where Go would read a value Gatehouse cannot be sure of, the form is refused instead of
//! guessed at: a field given twice in the reading asked for (Go takes the first, which depends on
//! where each came from), a `;` separator (Go refuses it but keeps parsing), a malformed `%`
//! escape, a value that is not UTF-8, a multipart body Go's reader could read otherwise
//! ([`crate::multipart`]). Pure: no I/O; a fuzz target (`form_fields`) holds it to never
//! panicking.

use crate::classify::form_decode;

/// Why a form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormError {
    /// A `;` between fields: Go's `url.ParseQuery` reports it as an error but keeps the other
    /// fields, which the forge may or may not act on.
    #[error("the form has a ';' separator")]
    Semicolon,
    /// A `%` not followed by two hex digits, or a value that is not UTF-8 once decoded.
    #[error("the form has a malformed field")]
    Malformed,
    /// A field Gatehouse reads is given more than once (in the body, the query, or both).
    #[error("the form gives `{0}` more than once")]
    Repeated(String),
    /// A JSON body on a route whose fields Gatehouse must read.
    #[error("a {0} body cannot be read on this route")]
    UnsupportedBody(&'static str),
    /// The handler could read a field from the binding or from `FormValue`, and they differ.
    #[error("the form's `{0}` is read differently by the form binding and by FormValue")]
    Ambiguous(String),
    /// A multipart body Go's reader could read otherwise than Gatehouse.
    #[error("the multipart body has {0}")]
    Multipart(&'static str),
}

/// A request's form fields, both ways a handler can read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    /// `Request.Form` after `ParseMultipartForm`, in Go's order.
    form_value: Vec<(String, String)>,
    /// What the binding maps into the form struct.
    bound: Vec<(String, String)>,
}

fn only<'a>(fields: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, FormError> {
    let mut found = fields.iter().filter(|(k, _)| k == name);
    let first = found.next();
    if found.next().is_some() {
        return Err(FormError::Repeated(name.to_owned()));
    }
    Ok(first.map(|(_, v)| v.as_str()))
}

/// What Go's `mime.ParseMediaType` makes of a `Content-Type`, as far as `ParseForm` cares: the
/// media type, lower-cased, without parameters.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// `url.ParseQuery` of `s`, appended to `out`.
fn parse_query(s: &str, out: &mut Vec<(String, String)>) -> Result<(), FormError> {
    for pair in s.split('&') {
        if pair.contains(';') {
            return Err(FormError::Semicolon);
        }
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = form_decode(k).map_err(|_| FormError::Malformed)?;
        let v = form_decode(v).map_err(|_| FormError::Malformed)?;
        out.push((k, v));
    }
    Ok(())
}

impl Form {
    /// Reads the form of a request: its `method` (upper-case), `Content-Type` (as sent), URL
    /// query and body, both ways (see the module's documentation).
    pub fn read(
        method: &str,
        content_type: Option<&str>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Self, FormError> {
        let raw = content_type.unwrap_or_default();
        let media = media_type(raw);
        // Both decoders named: the binding takes the first, but the forge may have read the
        // parts already (its context parses a multipart POST before routing), so which fields it
        // binds depends on what ran before. Refused.
        if raw.contains("form-urlencoded") && raw.contains("multipart/form-data")
            || media == "multipart/form-data" && raw.contains("form-urlencoded")
        {
            return Err(FormError::Multipart(
                "a Content-Type that names two decoders",
            ));
        }
        let mut parse_form = Vec::new();
        if matches!(method, "POST" | "PUT" | "PATCH")
            && media == "application/x-www-form-urlencoded"
        {
            let text = std::str::from_utf8(body).map_err(|_| FormError::Malformed)?;
            parse_query(text, &mut parse_form)?;
        }
        if let Some(q) = query {
            parse_query(q, &mut parse_form)?;
        }
        let parts = if media == "multipart/form-data" {
            let mut p = Vec::new();
            crate::multipart::read_values(raw, body, &mut p)?;
            p
        } else {
            Vec::new()
        };
        let mut form_value = parse_form.clone();
        form_value.extend(parts.iter().cloned());
        let writes = matches!(method, "POST" | "PUT" | "PATCH" | "DELETE");
        // Without a body method or type the binding reads the form too.
        let bound = if (!writes && raw.is_empty()) || raw.contains("form-urlencoded") {
            parse_form
        } else if raw.contains("multipart/form-data") {
            // Not a multipart media type: `ParseMultipartForm` fails and nothing is bound.
            parts
        } else if raw.contains("json") {
            return Err(FormError::UnsupportedBody("JSON"));
        } else {
            Vec::new()
        };
        Ok(Self { form_value, bound })
    }

    /// The value of `name` as `FormValue` reads it (compared exactly), if the form has it;
    /// refused if it has it more than once.
    pub fn one(&self, name: &str) -> Result<Option<&str>, FormError> {
        only(&self.form_value, name)
    }

    /// The value of `name` as the binding maps it into the form struct.
    pub fn bound(&self, name: &str) -> Result<Option<&str>, FormError> {
        only(&self.bound, name)
    }

    /// The value of `name` when both readings give the same one (for a field Gatehouse cannot
    /// say how the handler reads); refused when they differ.
    pub fn agreed(&self, name: &str) -> Result<Option<&str>, FormError> {
        let (a, b) = (self.one(name)?, self.bound(name)?);
        if a != b {
            return Err(FormError::Ambiguous(name.to_owned()));
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn body_then_query_as_go_reads_them() {
        let f = Form::read(
            "POST",
            FORM,
            Some("tab=x"),
            b"commit_choice=commit-to-new-branch&new_branch_name=feature%2Fa+b",
        )
        .unwrap();
        assert_eq!(f.one("commit_choice"), Ok(Some("commit-to-new-branch")));
        assert_eq!(f.one("new_branch_name"), Ok(Some("feature/a b")));
        assert_eq!(f.one("tab"), Ok(Some("x")));
        assert_eq!(f.one("absent"), Ok(None));
        // Names compare exactly.
        assert_eq!(f.one("New_Branch_Name"), Ok(None));
    }

    #[test]
    fn a_field_twice_is_refused_wherever_the_copies_are() {
        for (body, query) in [
            (&b"name=main&name=dev"[..], None),
            (&b"name=dev"[..], Some("name=main")),
            (&b""[..], Some("name=main&name=dev")),
        ] {
            let f = Form::read("POST", FORM, query, body).unwrap();
            assert_eq!(f.one("name"), Err(FormError::Repeated("name".into())));
        }
    }

    #[test]
    fn what_go_does_not_read_is_not_read() {
        // A GET's or DELETE's body, and a body of another type, are not the form's.
        for (m, ct) in [
            ("GET", FORM),
            ("DELETE", FORM),
            ("POST", Some("text/plain")),
            ("POST", None),
        ] {
            let f = Form::read(m, ct, Some("name=dev"), b"name=main").unwrap();
            assert_eq!(f.one("name"), Ok(Some("dev")), "{m} {ct:?}");
        }
        // The media type is compared without case and without its parameters.
        let f = Form::read(
            "PATCH",
            Some("Application/X-WWW-Form-Urlencoded ; charset=UTF-8"),
            None,
            b"name=main",
        )
        .unwrap();
        assert_eq!(f.one("name"), Ok(Some("main")));
        // ... but the binding looks for `form-urlencoded` as sent: this binds nothing.
        assert_eq!(f.bound("name"), Ok(None));
    }

    /// The binding picks its decoder by substrings of the Content-Type as sent, and binds
    /// multipart parts without the query; `FormValue` goes by media type and reads the query too.
    #[test]
    fn the_binding_reads_otherwise_than_form_value() {
        let mp = "multipart/form-data; boundary=x";
        let parts = b"--x\r\nContent-Disposition: form-data; name=\"commit_choice\"\r\n\r\ncommit-to-new-branch\r\n--x--\r\n";
        // Multipart: the query is FormValue's, not the binding's.
        let f = Form::read("POST", Some(mp), Some("new_branch_name=ok"), parts).unwrap();
        assert_eq!(f.one("new_branch_name"), Ok(Some("ok")));
        assert_eq!(f.bound("new_branch_name"), Ok(None));
        assert_eq!(f.bound("commit_choice"), Ok(Some("commit-to-new-branch")));
        assert_eq!(
            f.agreed("new_branch_name"),
            Err(FormError::Ambiguous("new_branch_name".into()))
        );
        assert_eq!(f.agreed("commit_choice"), Ok(Some("commit-to-new-branch")));
        // A type naming both decoders: which fields the forge binds depends on whether it read
        // the parts before routing (found by review). Refused.
        for ct in [
            "multipart/form-data; boundary=x; x=form-urlencoded",
            "multipart/form-data; boundary=form-urlencoded",
            "application/x-www-form-urlencoded; x=multipart/form-data",
        ] {
            assert!(matches!(
                Form::read("POST", Some(ct), Some("a=1"), parts),
                Err(FormError::Multipart(_))
            ));
        }
        // Another type, or none: the binding binds nothing; FormValue reads the query.
        for ct in [Some("text/plain"), None] {
            let f = Form::read("POST", ct, Some("commit_choice=x"), b"commit_choice=y").unwrap();
            assert_eq!(f.bound("commit_choice"), Ok(None), "{ct:?}");
            assert_eq!(f.one("commit_choice"), Ok(Some("x")), "{ct:?}");
        }
        // A URL-encoded body: both read the body, then the query.
        let f = Form::read("POST", FORM, Some("b=2"), b"a=1").unwrap();
        assert_eq!((f.bound("a"), f.bound("b")), (Ok(Some("1")), Ok(Some("2"))));
        assert_eq!(f.agreed("a"), Ok(Some("1")));
    }

    #[test]
    fn what_cannot_be_read_for_sure_is_refused() {
        let r = |body: &[u8]| Form::read("POST", FORM, None, body);
        assert_eq!(r(b"name=main;name=dev"), Err(FormError::Semicolon));
        assert_eq!(r(b"name=ma%zzin"), Err(FormError::Malformed));
        assert_eq!(r(b"name=%ff"), Err(FormError::Malformed));
        assert_eq!(r(&[0xff, b'=', b'x']), Err(FormError::Malformed));
        assert!(matches!(
            Form::read("POST", Some("multipart/form-data; boundary=x"), None, b""),
            Err(FormError::Multipart(_))
        ));
        // The query's fields and the parts' are one form: a field in both is refused.
        let mp = Some("multipart/form-data; boundary=x");
        let body = b"--x\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nmain\r\n--x--\r\n";
        let f = Form::read("POST", mp, Some("a=1"), body).unwrap();
        assert_eq!(f.one("name"), Ok(Some("main")));
        assert_eq!(f.one("a"), Ok(Some("1")));
        let f = Form::read("POST", mp, Some("name=dev"), body).unwrap();
        assert_eq!(f.one("name"), Err(FormError::Repeated("name".into())));
        assert_eq!(
            Form::read("POST", Some("application/json"), None, b"{}"),
            Err(FormError::UnsupportedBody("JSON"))
        );
        // Empty pairs are skipped, as Go skips them; a name without `=` has an empty value.
        let f = r(b"&&name&x=1&").unwrap();
        assert_eq!(f.one("name"), Ok(Some("")));
    }
}
