use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::proc::{TempDir, local_listener};

/// The system user the upstream sshd lets in; its login shell is `git-shell`.
pub const SSHD_USER: &str = "gatehouse-git";

/// A real OpenSSH `sshd` on 127.0.0.1 standing in for a forge's SSH server: key-only, user
/// [`SSHD_USER`] with `git-shell`, trusting the user CA in `ca_pub` (`TrustedUserCAKeys`) for the
/// principals listed. Must run as root (sshd privilege separation, the user). The repositories
/// under `repos` are given to that user.
///
/// The principals are given by an `AuthorizedPrincipalsCommand` that also records every
/// certificate a login presents ([`Self::presented_certificates`]), so that tests can see which
/// principal each session towards the forge carried: sshd itself logs the key id, not the
/// principals.
///
/// sshd runs in inetd mode (`sshd -i`, one process per connection, as OpenSSH documents it): the
/// harness listens on a port of the kernel's choice and hands each accepted connection to a new
/// `sshd -i`, because sshd cannot be given a listening socket or told to bind port 0.
pub struct Sshd {
    pub port: u16,
    dir: TempDir,
    stop: Arc<AtomicBool>,
    sessions: Arc<Mutex<Vec<std::process::Child>>>,
    acceptor: Option<JoinHandle<()>>,
}

/// Where the principals command lives: sshd runs only a command owned by root whose path has no
/// group- or world-writable directory, which rules out the temporary directories.
const PRINCIPALS_COMMAND: &str = "/run/gatehouse-testkit/principals-command";

/// Test-only: appends `<type> <base64 certificate> <key id>` to `<dir>/principals.log`, then
/// prints the principals `<dir>/principals/<user>` accepts.
const PRINCIPALS_SCRIPT: &str = "#!/bin/sh\n# gatehouse-testkit (tests only): records each certificate presented to the test sshd.\ndir=$1 user=$2 type=$3 cert=$4\nshift 4\nprintf '%s %s %s\\n' \"$type\" \"$cert\" \"$*\" >> \"$dir/principals.log\"\ncat \"$dir/principals/$user\"\n";

/// Installs [`PRINCIPALS_SCRIPT`] (every test writes the same bytes; a rename makes it atomic).
fn install_principals_command() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Path::new(PRINCIPALS_COMMAND)
        .parent()
        .unwrap_or(Path::new("/run"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = dir.join(format!("principals-command.{}", std::process::id()));
    std::fs::write(&tmp, PRINCIPALS_SCRIPT).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, PRINCIPALS_COMMAND).unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    pub fn start(repos: &Path, ca_pub: &Path, principals: &[&str]) -> Self {
        let dir = TempDir::new("sshd");
        let d = dir.path();
        let git_shell = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v git-shell"])
                .output()
                .expect("sh")
                .stdout,
        )
        .unwrap();
        let git_shell = git_shell.trim();
        assert!(!git_shell.is_empty(), "git-shell not found");
        let exists = Command::new("id")
            .arg(SSHD_USER)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            // Another test may be creating it at the same moment: tolerate "already exists".
            let _ = Command::new("useradd")
                .args(["--system", "--no-create-home", "--home-dir", "/", "--shell"])
                .arg(git_shell)
                .arg(SSHD_USER)
                .output();
        }
        // '*' = no password but not locked ('!' is refused when UsePAM is off).
        run(Command::new("usermod").args(["-p", "*", "-s", git_shell, SSHD_USER]));
        run(Command::new("chown").args(["-R", SSHD_USER]).arg(repos));
        std::fs::create_dir_all("/run/sshd").unwrap();
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join("host_ed25519")));
        let principals_dir = d.join("principals");
        std::fs::create_dir_all(&principals_dir).unwrap();
        std::fs::write(
            principals_dir.join(SSHD_USER),
            format!("{}\n", principals.join("\n")),
        )
        .unwrap();
        install_principals_command();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "HostKey {d}/host_ed25519\n\
AuthorizedKeysFile none\nTrustedUserCAKeys {ca}\n\
AuthorizedPrincipalsCommand {PRINCIPALS_COMMAND} {d} %u %t %k %i\nAuthorizedPrincipalsCommandUser root\n\
StrictModes no\nPubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
UsePAM no\nPermitRootLogin no\nAllowUsers {SSHD_USER}\nAllowTcpForwarding no\nX11Forwarding no\n\
PermitTTY no\nPrintMotd no\nAcceptEnv GIT_PROTOCOL\nLogLevel VERBOSE\n",
                d = d.display(),
                ca = ca_pub.display()
            ),
        )
        .unwrap();
        run(Command::new("/usr/sbin/sshd")
            .arg("-t")
            .arg("-f")
            .arg(&config));
        let listener = local_listener();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, sessions, log) = (stop.clone(), sessions.clone(), d.join("sshd.log"));
            std::thread::spawn(move || accept_loop(&listener, &config, &log, &stop, &sessions))
        };
        Self {
            port,
            dir,
            stop,
            sessions,
            acceptor: Some(acceptor),
        }
    }

    /// The host key line, to pin.
    pub fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Every certificate a login presented, oldest first: the OpenSSH text (`<type> <base64>`)
    /// and its key id.
    pub fn presented_certificates(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.path().join("principals.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                let (t, k, id) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
                Some((format!("{t} {k}"), id.to_owned()))
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// Hands each connection to a new `sshd -i` (its stdin and stdout are the connection, its stderr
/// goes to `log`) until `stop` is set.
fn accept_loop(
    listener: &TcpListener,
    config: &Path,
    log: &Path,
    stop: &AtomicBool,
    sessions: &Mutex<Vec<std::process::Child>>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let (Ok(out), Ok(err)) = (
            conn.try_clone(),
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log),
        ) else {
            continue;
        };
        let child = Command::new("/usr/sbin/sshd")
            .args(["-i", "-e", "-f"])
            .arg(config)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(conn)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(out)))
            .stderr(err)
            .spawn();
        let mut sessions = sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        if let Ok(c) = child {
            sessions.push(c);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so that it sees `stop`.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for c in sessions.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
