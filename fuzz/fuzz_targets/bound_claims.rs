//! `bound_claims` glob matching of a token's claim value (attacker-chosen where the issuer lets
//! a job pick it: a branch name, a workflow name) against a configured pattern. Never panics,
//! and agrees with a plain recursive reading of the same rules (`*` any run, `?` one character,
//! `\` escapes).
#![no_main]

use gatehouse_authn::glob_match;
use libfuzzer_sys::fuzz_target;

fn reference(p: &[char], t: &[char]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
        Some(('?', rest)) => !t.is_empty() && reference(rest, &t[1..]),
        Some(('\\', rest)) => {
            let (c, rest) = rest.split_first().map_or(('\\', rest), |(c, r)| (*c, r));
            t.first() == Some(&c) && reference(rest, &t[1..])
        }
        Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, value) = text.split_once('\n').unwrap_or((&text, ""));
    // The reference is exponential in stars: keep it to what a config would hold.
    if pattern.chars().filter(|c| *c == '*').count() > 6 || value.len() > 64 {
        let _ = glob_match(pattern, value);
        return;
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = value.chars().collect();
    assert_eq!(glob_match(pattern, value), reference(&p, &t), "{pattern:?} ~ {value:?}");
});
