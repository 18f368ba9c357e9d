use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::proc::{TempDir, local_listener, wait_for};

/// The system user Debian's `postgresql` package creates: the server refuses to run as root.
const PG_USER: &str = "postgres";
/// The role and database the tests use, with a password (so the URL carries a secret, as in a
/// deployment) over TCP on 127.0.0.1.
const ROLE: &str = "gatehouse";
const PASSWORD: &str = "test-only-password";

/// A real PostgreSQL server (Debian's package) on 127.0.0.1, in its own data directory. Every
/// connection is over TCP with a SCRAM password.
///
/// The server runs under a keeper shell whose stdin is a pipe from this process: when the pipe
/// closes (this handle dropped, or the test process exiting by any route, a panic or a kill
/// included) the keeper stops the server (fast shutdown) and deletes its directory. So a server
/// shared by a whole test binary ([`Postgres::shared`], held in a static that is never dropped)
/// does not outlive it.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    keeper: std::process::Child,
    pipe: Option<std::process::ChildStdin>,
    log: PathBuf,
    _dir: TempDir,
}

/// The keeper: starts the server (its command line in "$@"), waits for EOF on stdin, then stops
/// the server and deletes the directory ($1).
const KEEPER: &str = r#"dir=$1; shift
"$@" &
pid=$!
read _ignored
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir"
"#;

/// Where Debian keeps the server binaries (`/usr/lib/postgresql/<major>/bin`, not on PATH).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql: install PostgreSQL with scripts/install-deps.sh")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

/// A command run as [`PG_USER`] when we are root (`setpriv` execs, so signals reach the server).
fn as_pg(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    if root {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={PG_USER}"),
            &format!("--regid={PG_USER}"),
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// initdb, start, and create the database `gatehouse` owned by role `gatehouse`.
    pub fn start() -> Self {
        let dir = TempDir::new("postgres");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        run(Command::new("chown").args(["-R", PG_USER]).arg(dir.path()));
        let bin = bin_dir();
        run(as_pg(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                ROLE,
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display())));
        let port = {
            let l = local_listener();
            l.local_addr().unwrap().port()
        };
        let pg_cmd = as_pg(&bin.join("postgres"));
        let log = dir.path().join("postgres.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut keeper = Command::new("sh");
        keeper
            .args(["-c", KEEPER, "keeper"])
            .arg(dir.path())
            .arg(pg_cmd.get_program())
            .args(pg_cmd.get_args())
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", sock.display()))
            // Durable as in production: kill -9 tests rely on acknowledged commits being on disk.
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "max_connections=200"])
            .stdin(std::process::Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let mut keeper = keeper.spawn().expect("sh");
        let pipe = keeper.stdin.take();
        let mut pg = Postgres {
            port,
            bin,
            keeper,
            pipe,
            log,
            _dir: dir,
        };
        wait_for("postgres accepting logins", Duration::from_secs(30), || {
            if let Ok(Some(_)) = pg.keeper.try_wait() {
                panic!(
                    "postgres exited:\n{}",
                    std::fs::read_to_string(&pg.log).unwrap_or_default()
                );
            }
            pg.psql("postgres", "SELECT 1").ok()
        });
        pg.psql("postgres", &format!("CREATE DATABASE {ROLE} OWNER {ROLE}"))
            .unwrap();
        pg
    }

    /// One server for the whole test binary (started by the first caller); each test should use
    /// its own database ([`Self::create_database`]).
    pub fn shared() -> &'static Postgres {
        static PG: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
        PG.get_or_init(Postgres::start)
    }

    /// `postgres://gatehouse:<password>@127.0.0.1:<port>/<db>`.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of the database `gatehouse`.
    pub fn url(&self) -> String {
        self.url_for(ROLE)
    }

    /// The password in [`Self::url`] (to check it never shows up in output).
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// A fresh, empty database (one per test, so tests sharing a server do not see each other).
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"))
            .unwrap();
        self.url_for(name)
    }

    /// Runs `sql` with `psql` in `db`; the output, or the error text.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                ROLE,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // EOF on the keeper's stdin: it stops the server and deletes the directory.
        drop(self.pipe.take());
        for _ in 0..300 {
            if let Ok(Some(_)) = self.keeper.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.keeper.kill();
    }
}
