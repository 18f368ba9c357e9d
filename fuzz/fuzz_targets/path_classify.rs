//! Request classification over arbitrary method, path and query: never panics, and what it
//! accepts is stable: the forwarded path classifies again to the same resource and action.
#![no_main]

use gatehouse_git::{ForgeFlavor, classify, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or("GET");
    let path = parts.next().unwrap_or("/");
    let query = parts.next();
    for flavor in [ForgeFlavor::Gitea, ForgeFlavor::Generic] {
        let Ok(c) = classify(flavor, method, "git.example", path, query) else { continue };
        // The forwarded path is already normal: normalizing it again changes nothing.
        let again = normalize_path(&c.forward_path).expect("forwarded path re-normalizes");
        assert_eq!(again.encoded(), c.forward_path);
        // The decoded path carried for the audit record and CGI is the forwarded one, decoded.
        assert_eq!(again.decoded(), c.decoded_path);
        // The upstream sees the same resource and action that the policy was asked about.
        let c2 = classify(flavor, method, "git.example", &c.forward_path, c.forward_query.as_deref())
            .expect("forwarded request classifies");
        assert_eq!(c2.resource, c.resource);
        assert_eq!(c2.action, c.action);
        assert!(!c.forward_path.contains("/../") && !c.forward_path.contains("//"));
    }
});
