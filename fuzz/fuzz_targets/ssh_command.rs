//! The SSH exec-command parser over arbitrary input: never panics, and what it accepts is stable:
//! the command sent upstream parses back to the same service and repository.
#![no_main]

use gatehouse_git::{ForgeFlavor, parse_ssh_command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = std::str::from_utf8(data) else { return };
    for flavor in [ForgeFlavor::Gitea, ForgeFlavor::Generic] {
        if let Ok(c) = parse_ssh_command(flavor, cmd) {
            let again = parse_ssh_command(flavor, &c.upstream_command()).expect("upstream command re-parses");
            assert_eq!(again, c);
        }
    }
});
