//! The LFS batch `operation` reader over arbitrary bodies: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gatehouse_git::lfs_batch_operation(data);
});
