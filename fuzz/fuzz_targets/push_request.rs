//! The receive-pack command-list parser over arbitrary bytes: never panics, and what it accepts
//! is self-consistent (the pack offset is inside the input, re-reading exactly the command list
//! gives the same result, every ref name is one git accepts).
#![no_main]

use gatehouse_git::{PushParse, parse_push_request, valid_ref_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(PushParse::Complete { request, pack_offset }) = parse_push_request(data) {
        assert!(pack_offset <= data.len());
        let again = parse_push_request(&data[..pack_offset]).expect("prefix re-parses");
        assert_eq!(again, PushParse::Complete { request: request.clone(), pack_offset });
        assert!(request.updates.iter().all(|u| valid_ref_name(&u.name)));
    }
});
