//! The form reader over arbitrary method, content type, query and body: never panics, and a field
//! it returns is one the query or body really holds, once.
#![no_main]

use gatehouse_git::Form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // method \n content type \n query \n body
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let method = parts.next().and_then(|m| std::str::from_utf8(m).ok()).unwrap_or("POST");
    let ct = parts.next().and_then(|c| std::str::from_utf8(c).ok());
    let query = parts.next().and_then(|q| std::str::from_utf8(q).ok());
    let body = parts.next().unwrap_or_default();
    let Ok(form) = Form::read(method, ct, query, body) else { return };
    for name in ["name", "new_branch_name", "commit_choice", "tag_name", ""] {
        if let Ok(Some(v)) = form.one(name) {
            // Reading the query alone gives the same value or none: the body came first.
            if let Ok(q) = Form::read("GET", None, query, b"")
                && let Ok(Some(qv)) = q.one(name)
            {
                assert_eq!(qv, v);
            }
        }
    }
});
