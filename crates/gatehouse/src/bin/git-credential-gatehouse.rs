//! `git-credential-gatehouse`: the name git runs for `credential.<url>.helper = gatehouse`.
//! The same as `gatehouse credential <get|store|erase>`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(op) = std::env::args().nth(1) else {
        eprintln!("usage: git-credential-gatehouse <get|store|erase>");
        return ExitCode::from(2);
    };
    match gatehouse_app::credential(&op) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}
