use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// Runs the Chromium sign-in scenario (`idp/browser.mjs`, playwright-core driving Debian's
/// headless Chromium) and returns what it saw. Panics when Chromium or playwright-core is
/// missing (run scripts/install-deps.sh) or the scenario cannot start.
pub fn browser_sign_in(scenario: &Value, timeout: Duration) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("idp");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/install-deps.sh"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/install-deps.sh"
    );
    let mut child = Command::new("node")
        .arg("browser.mjs")
        .arg(scenario.to_string())
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start node browser.mjs");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait for browser").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser scenario did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("browser output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "browser scenario printed no JSON ({e}):\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
