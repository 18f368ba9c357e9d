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

use gatehouse_git::model::assert_reader_agrees;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Some((&first, data)) = input.split_first() {
        assert_reader_agrees(data, &[usize::from(first % 17) + 1]);
    }
});
