//! The unverified JWT parser over arbitrary input: never panics; what it accepts has three parts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(jwt) = gatehouse_authn::parse_unverified(text) {
        assert_eq!(text.matches('.').count(), 2);
        assert!(text.starts_with(&jwt.signing_input));
    }
});
