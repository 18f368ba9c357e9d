//! The fields of a forge's web form, read as the forge reads them: Go's `Request.ParseForm`
//! (`net/http`) puts the values of an `application/x-www-form-urlencoded` body of a POST, PUT or
//! PATCH first and the URL query's after them, each parsed by `url.ParseQuery`; the forge's form
//! binding takes a field's first value. The routes that move refs name their refs in such fields
//! (`new_branch_name`, `commit_choice`, `name`, `tag_name`), so Gatehouse must read the same
//! value the forge will act on.
//!
//! Where Go would read a value Gatehouse cannot be sure of, the form is refused instead of
//! guessed at: a field given twice (Go takes the first, which depends on where each came from), a
//! `;` separator (Go refuses it but keeps parsing), a malformed `%` escape, a value that is not
//! UTF-8. A `multipart/form-data` body (the web UI's `fetch` with `FormData`) is read as Go's
//! `ParseMultipartForm` reads it: the query's fields first, then the parts' ([`crate::multipart`],
//! which refuses what Go would read otherwise). A JSON body, which the binding would decode into
//! the form by Go field names, is refused ([`FormError::UnsupportedBody`]).
//! Pure: no I/O; a fuzz target (`form_fields`) holds it to never panicking.

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
    /// A multipart body Go's reader could read otherwise than Gatehouse.
    #[error("the multipart body has {0}")]
    Multipart(&'static str),
}

/// A request's form fields, in the order Go's `Request.Form` holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    fields: Vec<(String, String)>,
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
    /// Reads the form of a request: its `method` (upper-case), `Content-Type`, URL query and
    /// body. The body is read only where Go reads it (a POST, PUT or PATCH whose media type is
    /// `application/x-www-form-urlencoded`, or any method's `multipart/form-data` body); any
    /// other body is none of the form's business, except JSON, which the forge's binding reads
    /// and Gatehouse refuses.
    pub fn read(
        method: &str,
        content_type: Option<&str>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Self, FormError> {
        let mut fields = Vec::new();
        let ct = content_type.map(media_type).unwrap_or_default();
        if ct == "multipart/form-data" {
            if let Some(q) = query {
                parse_query(q, &mut fields)?;
            }
            crate::multipart::read_values(content_type.unwrap_or_default(), body, &mut fields)?;
            return Ok(Self { fields });
        }
        // go-chi/binding decodes any body whose type mentions JSON into the form.
        if ct.contains("json") {
            return Err(FormError::UnsupportedBody("JSON"));
        }
        if matches!(method, "POST" | "PUT" | "PATCH") && ct == "application/x-www-form-urlencoded" {
            let text = std::str::from_utf8(body).map_err(|_| FormError::Malformed)?;
            parse_query(text, &mut fields)?;
        }
        if let Some(q) = query {
            parse_query(q, &mut fields)?;
        }
        Ok(Self { fields })
    }

    /// The value of `name` (compared exactly, as the binding does), if the form has it; refused
    /// if it has it more than once.
    pub fn one(&self, name: &str) -> Result<Option<&str>, FormError> {
        let mut found = self.fields.iter().filter(|(k, _)| k == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(FormError::Repeated(name.to_owned()));
        }
        Ok(first.map(|(_, v)| v.as_str()))
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
