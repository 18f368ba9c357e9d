use std::path::{Path, PathBuf};
use std::process::Command;

use crate::proc::{Child, TempDir, free_port};

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
pub struct Sshd {
    pub port: u16,
    dir: TempDir,
    _child: Child,
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
        let port = free_port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
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
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        let mut child = Child::spawn("sshd", &mut cmd, &d.join("sshd.log"));
        child.wait_listening("sshd", port);
        Self {
            port,
            dir,
            _child: child,
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
