//! `receive-pack`'s answer to a push, read on its way to git (`ReportReader`, and over SSH
//! `AnswerCapture`, which skips the ref advertisement first). Never panics; reads the same
//! however the bytes are cut; confirms refs only from a complete report that said `unpack ok`,
//! and only branches and tags.
#![no_main]

use gatehouse_git::{AnswerCapture, ReportReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let sideband = ctl & 1 == 1;
    let step = usize::from(ctl >> 1).max(1);
    let mut whole = ReportReader::new(sideband);
    whole.feed(bytes);
    let whole = whole.finish();
    let mut cut = ReportReader::new(sideband);
    for c in bytes.chunks(step) {
        cut.feed(c);
    }
    let cut = cut.finish();
    assert_eq!(whole, cut, "the report reads differently when cut every {step} bytes");
    if !whole.complete {
        assert!(whole.ok.is_empty(), "an incomplete report confirmed refs");
    }
    let mut cap = AnswerCapture::new();
    for c in bytes.chunks(step) {
        cap.feed(c);
    }
    let mut once = AnswerCapture::new();
    once.feed(bytes);
    let (cut, once) = (cap.finish(sideband), once.finish(sideband));
    assert_eq!(cut, once, "the capture reads differently when cut every {step} bytes");
    if !once.complete {
        assert!(once.ok.is_empty(), "an incomplete report confirmed refs");
    }
    assert!(
        once.ok.iter().all(|r| r.starts_with("refs/heads/") || r.starts_with("refs/tags/")),
        "a ref other than a branch or tag was confirmed"
    );
});
