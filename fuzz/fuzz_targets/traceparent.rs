//! W3C `traceparent` over arbitrary input: never panics; what it accepts has non-zero ids and
//! reads back the same from its canonical version-00 form.
#![no_main]

use gatehouse_core::TraceParent;
use libfuzzer_sys::fuzz_target;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(t) = TraceParent::parse(s) {
        assert_ne!(t.trace_id, [0; 16]);
        assert_ne!(t.parent_id, [0; 8]);
        let canonical = format!("00-{}-{}-{:02x}", hex(&t.trace_id), hex(&t.parent_id), t.flags);
        assert_eq!(TraceParent::parse(&canonical), Some(t));
    }
});
