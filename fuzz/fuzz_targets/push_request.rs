//! The receive-pack command-list reader over arbitrary bytes, checked against `model` (a
//! transcription of git's own `read_head_info` and friends, itself checked against the real
//! `git receive-pack` by `crates/gatehouse-git/tests/receive_pack.rs`):
//! - it never panics, and the result does not depend on how the bytes are cut into pieces (the
//!   first byte of the input picks the piece size);
//! - what it accepts, git reads the same way: the same commands in the same order, the same push
//!   options, the pack at the same offset;
//! - what it refuses, git dies on, or it names a ref git itself would not update (or the input
//!   is over the limits);
//! - when it wants more, git reading this input would have hit its end.
#![no_main]

use gatehouse_git::model::{Outcome, receive_pack};
use gatehouse_git::{Feed, ObjectFormat, PushError, PushLimits, PushReader, valid_ref_name};
use libfuzzer_sys::fuzz_target;

fn read(data: &[u8], piece: usize) -> Result<Option<(gatehouse_git::PushRequest, usize)>, PushError> {
    let mut reader = PushReader::new(PushLimits::default());
    let mut at = 0;
    while at < data.len() {
        let end = (at + piece).min(data.len());
        if let Feed::Done(n) = reader.feed(&data[at..end])? {
            return reader.finish().map(|r| Some((r, at + n)));
        }
        at = end;
    }
    Ok(None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let whole = read(data, data.len().max(1));
    let piece = usize::from(first % 17) + 1;
    assert_eq!(read(data, piece), whole, "pieces of {piece}");
    let format = match &whole {
        Ok(Some((r, _))) => r.object_format,
        _ => ObjectFormat::Sha1,
    };
    let git = receive_pack(data, format, true);
    match (&whole, &git) {
        (Ok(Some((req, off))), Outcome::Commands { updates, push_options, pack_offset }) => {
            let mine: Vec<_> = req
                .updates
                .iter()
                .map(|u| (u.old.clone(), u.new.clone(), u.name.as_bytes().to_vec()))
                .collect();
            assert_eq!(&mine, updates);
            assert_eq!(off, pack_offset);
            let opts: Vec<Vec<u8>> = req.push_options.iter().map(|o| o.as_bytes().to_vec()).collect();
            assert_eq!(opts, push_options.clone().unwrap_or_default());
            assert!(req.updates.iter().all(|u| valid_ref_name(&u.name)));
        }
        (Ok(Some(_)), Outcome::Dies(why)) => panic!("git dies ({why}), the reader accepts"),
        (Ok(None), Outcome::Dies(why)) => {
            assert!(why.contains("hung up"), "the reader waits where git dies: {why}")
        }
        (Ok(None), Outcome::Commands { .. }) => panic!("the reader waits where git goes on"),
        (Err(_), Outcome::Dies(_)) => {}
        (Err(e), Outcome::Commands { updates, push_options, .. }) => {
            let unnameable = updates
                .iter()
                .any(|(_, _, r)| std::str::from_utf8(r).map_or(true, |r| !valid_ref_name(r)));
            let bad_option = push_options
                .iter()
                .flatten()
                .any(|o| std::str::from_utf8(o).is_err());
            assert!(
                (unnameable && *e == PushError::BadRefName)
                    || (bad_option && *e == PushError::BadPushOption),
                "the reader refuses ({e}) what git reads: {updates:?}"
            );
        }
    }
});
