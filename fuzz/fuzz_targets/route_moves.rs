//! The body readers of ref-moving routes (the JSON reader, the form and multipart readers) and
//! the planner over arbitrary route, method, content type, query and body: never panics, and
//! every ref it names is a valid ref name; a JSON field it reads is in the body, spelled
//! exactly.
#![no_main]

use gatehouse_core::Via;
use gatehouse_git::{
    ForgeFlavor, RefMove, RefSource, body_fields, plan_moves, read_json_fields, read_route_fields,
    route_rest, valid_ref_name,
};
use libfuzzer_sys::fuzz_target;



fuzz_target!(|data: &[u8]| {
    // selector byte, then path \n content type \n query \n body
    let Some((&sel, data)) = data.split_first() else { return };
    let flavor = [ForgeFlavor::Gitea, ForgeFlavor::Forgejo, ForgeFlavor::Gogs][usize::from(sel % 3)];
    let via = if sel & 4 == 0 { Via::Web } else { Via::Api };
    let moves = RefMove::ALL[usize::from(sel >> 3) % RefMove::ALL.len()];
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let path = parts.next().and_then(|p| std::str::from_utf8(p).ok()).unwrap_or("/a/b/_edit/main");
    let ct = parts.next().and_then(|c| std::str::from_utf8(c).ok());
    let query = parts.next().and_then(|q| std::str::from_utf8(q).ok());
    let body = parts.next().unwrap_or_default();
    let rest = route_rest(path, via);
    let wanted = body_fields(flavor, moves, via, &rest);
    if let Ok(json) = read_json_fields(body, wanted) {
        for (name, _) in wanted {
            if json.str(name).is_some() || json.bool(name).is_some() {
                let text = String::from_utf8_lossy(body);
                let escaped = text.contains('\\');
                assert!(escaped || text.contains(&format!("\"{name}\"")), "{name}");
            }
        }
    }
    let Ok(fields) = read_route_fields(via, "POST", ct, query, body, wanted) else { return };
    let Ok(planned) = plan_moves(flavor, moves, via, &rest, fields.fields()) else { return };
    for p in planned {
        match p.source {
            RefSource::Named(n) => assert!(valid_ref_name(&n), "{n}"),
            RefSource::AnyOf(ns) => {
                assert!(!ns.is_empty());
                assert!(ns.iter().all(|n| valid_ref_name(n)));
            }
            RefSource::PullBase(n) | RefSource::PullHead(n) | RefSource::ReleaseTag(n) => {
                assert!(n > 0);
            }
            RefSource::IfEmpty(n) => assert!(valid_ref_name(&n), "{n}"),
            RefSource::TagsLike(t) | RefSource::ReleaseTagsLike(t) => {
                assert!(valid_ref_name(&format!("refs/tags/{t}")), "{t}");
            }
            RefSource::DefaultBranch | RefSource::DefaultBranchIfEmpty => {}
        }
    }
});
