//! The body of an RFC 8693 token exchange request (`POST /.gatehouse/token`), as any client
//! sends it. Never panics; an accepted request always asks for at least one valid role, without
//! duplicates, and never carries an empty environment.
#![no_main]

use gatehouse_authn::{parse_exchange_form, valid_role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_exchange_form(data) {
        Ok(f) => {
            assert!(!f.roles.is_empty());
            assert!(f.roles.iter().all(|r| valid_role(r)), "{:?}", f.roles);
            assert!(f.roles.windows(2).all(|w| w[0] < w[1]), "{:?}", f.roles);
            assert!(f.environment.as_deref() != Some(""));
        }
        Err(e) => assert!(matches!(
            e.code,
            "invalid_request" | "unsupported_grant_type" | "invalid_scope"
        )),
    }
});
