//! Throwaway PostgreSQL harness for tests, examples and benches.
//!
//! Include it with `#[path = "../tests/support/pg.rs"] mod pg;` (or through
//! `mod support;` from integration tests). It only uses std plus
//! `deadpool-postgres` / `tokio-postgres`.
//!
//! * If `DATABASE_URL` is set (non-empty) it is used as is.
//! * Otherwise a private cluster is created once per process under
//!   `$TMPDIR/poolwatch-pg-<pid>-<n>` (unix socket only, no TCP). A small
//!   `sh` supervisor owns it: it blocks on `read` from a pipe whose write end
//!   this process keeps open forever, so when the process exits (normally,
//!   by panic, by signal) the pipe closes and the supervisor stops the server
//!   and removes the directory. Nothing relies on destructors of statics.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

const NOT_FOUND: &str = "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under \
/usr/lib/postgresql/*/bin; install them with `apt-get install postgresql` or set DATABASE_URL";

/// Port number of the unix socket (`.s.PGSQL.<port>`); the server listens on no TCP port.
/// Must match `-c port=5432` in [`SUPERVISOR_SCRIPT`].
const SOCKET_PORT: u16 = 5432;

struct Database {
    config: Result<tokio_postgres::Config, String>,
    description: String,
}

/// The supervisor shell and the pipes to it. Kept in a static and never
/// dropped: the stdin write end closing (at process exit) is the shutdown signal.
struct Supervisor {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

static DATABASE: OnceLock<Database> = OnceLock::new();
static SUPERVISOR: Mutex<Option<Supervisor>> = Mutex::new(None);
static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Connection settings for the test database: DATABASE_URL when set, else a
/// throwaway local cluster started once per process.
///
/// Synchronous and thread-safe; concurrent callers wait for the one startup.
pub fn pg_config() -> Result<tokio_postgres::Config, String> {
    database().config.clone()
}

/// A pool of at most `max_size` connections to the test database, with
/// `RecyclingMethod::Fast`, `Runtime::Tokio1` (so timeouts work) and `NoTls`.
///
/// Panics with the reason when no database is available.
#[track_caller]
pub fn pool(max_size: usize) -> Pool {
    pool_with(max_size, RecyclingMethod::Fast)
}

/// Like [`pool`], with the given recycling method.
#[track_caller]
pub fn pool_with(max_size: usize, recycling: RecyclingMethod) -> Pool {
    let config = match pg_config() {
        Ok(config) => config,
        Err(e) => panic!("no test database: {e}"),
    };
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: recycling,
        },
    );
    match Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .build()
    {
        Ok(pool) => pool,
        Err(e) => panic!("building the deadpool-postgres pool failed: {e}"),
    }
}

/// Human-readable description of the test database, never containing a
/// password, e.g. `throwaway PostgreSQL 15 at /tmp/poolwatch-pg-1234-0`.
pub fn describe() -> String {
    database().description.clone()
}

/// Description of a `DATABASE_URL` value without its password (also used
/// for error messages). Public so the harness test can check the redaction.
pub fn describe_database_url(raw: &str) -> String {
    match tokio_postgres::Config::from_str(raw) {
        Ok(config) => {
            let mut parts = Vec::new();
            if let Some(user) = config.get_user() {
                parts.push(format!("user={user}"));
            }
            let hosts: Vec<String> = config
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect();
            if !hosts.is_empty() {
                parts.push(format!("host={}", hosts.join(",")));
            }
            let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
            if !ports.is_empty() {
                parts.push(format!("port={}", ports.join(",")));
            }
            if let Some(dbname) = config.get_dbname() {
                parts.push(format!("dbname={dbname}"));
            }
            if parts.is_empty() {
                "DATABASE_URL (password hidden)".to_string()
            } else {
                format!("DATABASE_URL {} (password hidden)", parts.join(" "))
            }
        }
        Err(e) => format!(
            "DATABASE_URL is set but is not a valid PostgreSQL connection string: {}",
            scrub_secrets(&e.to_string(), raw)
        ),
    }
}

fn database() -> &'static Database {
    DATABASE.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(raw) if !raw.trim().is_empty() => {
            let description = describe_database_url(&raw);
            match tokio_postgres::Config::from_str(&raw) {
                Ok(config) => Database {
                    config: Ok(config),
                    description,
                },
                Err(_) => Database {
                    config: Err(description.clone()),
                    description,
                },
            }
        }
        _ => match start_throwaway() {
            Ok((config, description)) => Database {
                config: Ok(config),
                description,
            },
            Err(e) => Database {
                description: format!("no test database: {e}"),
                config: Err(e),
            },
        },
    })
}

/// Replace anything in `message` that could be the password from `raw`.
fn scrub_secrets(message: &str, raw: &str) -> String {
    let mut secrets: Vec<String> = Vec::new();
    // URL form: scheme://user:password@host...
    if let Some(idx) = raw.find("://") {
        let rest = &raw[idx + 3..];
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                secrets.push(userinfo[colon + 1..].to_string());
            }
        }
    }
    // key=value form or URL query parameter: password=...
    let lower = raw.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("password=") {
        let start = from + pos + "password=".len();
        let value: String = raw[start..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '&')
            .collect();
        secrets.push(value.trim_matches('\'').to_string());
        secrets.push(value);
        from = start;
    }
    let mut out = message.to_string();
    for secret in secrets {
        if !secret.is_empty() {
            out = out.replace(&secret, "***");
        }
    }
    out
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| is_executable(&dir.join(b)))
}

/// `initdb`, `pg_ctl`, `postgres` on PATH, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if !is_executable(&dir.join("initdb")) || !is_executable(&dir.join("pg_ctl")) {
                continue;
            }
            // Prefer the real directory behind a symlinked initdb (e.g.
            // /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb).
            if let Some(real) = fs::canonicalize(dir.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            {
                if has_server_binaries(&real) {
                    return Some(real);
                }
            }
            if has_server_binaries(&dir) {
                return Some(fs::canonicalize(&dir).unwrap_or(dir));
            }
        }
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(version) = name
            .split('.')
            .map(u32::from_str)
            .collect::<Result<Vec<u32>, _>>()
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if has_server_binaries(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

fn find_on_path(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `{program}` failed: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn running_as_root() -> bool {
    match command_output("id", &["-u"]) {
        Ok(uid) => uid == "0",
        Err(_) => {
            use std::os::unix::fs::MetadataExt;
            fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
        }
    }
}

/// Base directory for the cluster. The unix socket path must stay short
/// (about 107 bytes) and the path is quoted into a shell command, so fall
/// back to /tmp for long or unusual temp dirs.
fn base_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    let s = tmp.to_string_lossy();
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if plain && s.len() <= 60 && tmp.is_absolute() {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

fn create_cluster_dir() -> Result<PathBuf, String> {
    let base = base_dir();
    let pid = std::process::id();
    loop {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("poolwatch-pg-{pid}-{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // The umask may have narrowed it; make sure it is exactly 0700.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("chmod 0700 {}: {e}", dir.display()))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    }
}

/// Supervisor script. Arguments: $1 cluster dir, $2 bin dir, $3 "1" to run
/// the server tools as the postgres user, $4 runuser path, and optionally
/// $5 more server options (later `-c` settings win), $6 more initdb options
/// (both plain words: paths under the cluster dir, settings).
const SUPERVISOR_SCRIPT: &str = r#"
set -u
dir=$1 bin=$2 as_postgres=$3 runuser=$4 extra=${5:-} initdb_extra=${6:-}
data=$dir/data
# We run in our own process group, and also ignore the usual termination
# signals, so that a Ctrl-C or a test runner killing the test's process group
# cannot skip the cleanup: we stop when our stdin (held open by the test
# process) reaches EOF. PIPE is ignored so that writing "ready" or errors to a
# test process that already died fails quietly instead of killing us.
trap '' INT HUP QUIT TERM PIPE
run() {
  if [ "$as_postgres" = 1 ]; then "$runuser" -u postgres -- "$@"; else "$@"; fi
}
# fail MESSAGE LOG...: report MESSAGE and the tail of each LOG, clean up, exit.
fail() {
  echo "$1" >&2
  shift
  for f in "$@"; do
    if [ -s "$f" ]; then
      echo "--- last lines of $f ---" >&2
      tail -n 20 "$f" >&2
    fi
  done
  run "$bin/pg_ctl" -D "$data" -m immediate stop </dev/null >/dev/null 2>&1
  rm -rf "$dir"
  exit 1
}
run "$bin/initdb" -D "$data" -A trust --no-sync -U postgres -E UTF8 --locale=C $initdb_extra \
  </dev/null >"$dir/initdb.log" 2>&1 || fail "initdb failed" "$dir/initdb.log"
run "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
  -o "-k '$dir' -c port=5432 -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 $extra" \
  start </dev/null >"$dir/pg_ctl.log" 2>&1 || fail "pg_ctl start failed" "$dir/pg_ctl.log" "$dir/server.log"
echo ready
read _ || true
exec </dev/null >/dev/null 2>&1
run "$bin/pg_ctl" -D "$data" -m immediate stop
rm -rf "$dir"
"#;

/// Spawns the supervisor for a cluster in `dir` and waits until the
/// server is ready; on failure the directory is removed.
fn spawn_supervisor(
    dir: &Path,
    bin: &Path,
    as_root: bool,
    runuser: &Path,
) -> Result<Supervisor, String> {
    spawn_supervisor_with(dir, bin, as_root, runuser, "", "")
}

/// [`spawn_supervisor`] with more server and initdb options.
fn spawn_supervisor_with(
    dir: &Path,
    bin: &Path,
    as_root: bool,
    runuser: &Path,
    extra_server_options: &str,
    extra_initdb_options: &str,
) -> Result<Supervisor, String> {
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(SUPERVISOR_SCRIPT)
        .arg("poolwatch-pg-supervisor")
        .arg(dir)
        .arg(bin)
        .arg(if as_root { "1" } else { "0" })
        .arg(runuser)
        .arg(extra_server_options)
        .arg(extra_initdb_options)
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = fs::remove_dir_all(dir);
            return Err(format!(
                "spawning the PostgreSQL supervisor (sh) failed: {e}"
            ));
        }
    };

    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    let ready = loop {
        line.clear();
        match stdout.read_line(&mut line) {
            Ok(0) | Err(_) => break false,
            Ok(_) if line.trim() == "ready" => break true,
            Ok(_) => continue,
        }
    };
    if !ready {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        let _ = fs::remove_dir_all(dir);
        return Err(format!(
            "starting a throwaway PostgreSQL server in {} with {} failed (supervisor {status}):\n{}",
            dir.display(),
            bin.display(),
            stderr.trim_end()
        ));
    }
    Ok(Supervisor { child, stdout })
}

/// The server binaries, whether to run them as `postgres` (when root), and
/// `runuser`; then a fresh cluster directory owned by the server's user.
fn prepare_cluster() -> Result<(PathBuf, bool, PathBuf, PathBuf), String> {
    let bin = find_bin_dir().ok_or_else(|| NOT_FOUND.to_string())?;
    let as_root = running_as_root();
    let runuser = if as_root {
        if command_output("id", &["-u", "postgres"]).is_err() {
            return Err(
                "running as root, where initdb refuses to run, and there is no `postgres` \
                 user to run the throwaway PostgreSQL server as; create one (e.g. \
                 `apt-get install postgresql` or `useradd -r postgres`) or set DATABASE_URL"
                    .to_string(),
            );
        }
        find_on_path("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"]).ok_or_else(|| {
            "running as root, where initdb refuses to run, but `runuser` (util-linux) was not \
             found to run it as the `postgres` user; install util-linux or set DATABASE_URL"
                .to_string()
        })?
    } else {
        PathBuf::from("runuser")
    };

    let dir = create_cluster_dir()?;
    if as_root {
        if let Err(e) = command_output("chown", &["postgres", &dir.to_string_lossy()]) {
            let _ = fs::remove_dir_all(&dir);
            return Err(format!("chown postgres {}: {e}", dir.display()));
        }
    }
    Ok((bin, as_root, runuser, dir))
}

fn start_throwaway() -> Result<(tokio_postgres::Config, String), String> {
    let (bin, as_root, runuser, dir) = prepare_cluster()?;
    let supervisor = spawn_supervisor(&dir, &bin, as_root, &runuser)?;
    *SUPERVISOR.lock().unwrap_or_else(|e| e.into_inner()) = Some(supervisor);

    let version = fs::read_to_string(dir.join("data").join("PG_VERSION"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let description = if version.is_empty() {
        format!("throwaway PostgreSQL at {}", dir.display())
    } else {
        format!("throwaway PostgreSQL {version} at {}", dir.display())
    };

    Ok((cluster_config(&dir), description))
}

/// How to connect to a cluster in `dir`: its unix socket, as `postgres`.
fn cluster_config(dir: &Path) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir)
        .port(SOCKET_PORT)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(10));
    config
}

/// The server options the supervisor starts the cluster with (`pg_ctl -o`).
fn server_options(dir: &Path) -> String {
    format!(
        "-k '{}' -c port={SOCKET_PORT} -c listen_addresses='' -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        dir.display()
    )
}

/// A throwaway PostgreSQL cluster of the caller's own, which it may stop,
/// start and restart (the shared one of [`pg_config`] must stay up for the
/// other tests of the binary). Same supervision as the shared one: the
/// server is stopped and its directory removed when the `Cluster` is
/// dropped, or when the process exits whichever way.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    as_root: bool,
    runuser: PathBuf,
    supervisor: Option<Supervisor>,
    config: tokio_postgres::Config,
    /// Server options beyond [`server_options`] (see [`ClusterOptions`]).
    extra_options: String,
    /// The TCP port on 127.0.0.1, when listening there.
    tcp_port: Option<u16>,
}

/// Starts a private cluster. Errors when no server binaries are found (it
/// ignores `DATABASE_URL`: an external server cannot be restarted).
pub fn private_cluster() -> Result<Cluster, String> {
    let (bin, as_root, runuser, dir) = prepare_cluster()?;
    let supervisor = spawn_supervisor(&dir, &bin, as_root, &runuser)?;
    let config = cluster_config(&dir);
    Ok(Cluster {
        dir,
        bin,
        as_root,
        runuser,
        supervisor: Some(supervisor),
        config,
        extra_options: String::new(),
        tcp_port: None,
    })
}

/// How a private cluster listens beyond its Unix socket (which stays
/// `trust`).
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Also listen on TCP at 127.0.0.1, on a free port (the Unix socket
    /// then carries that port number too).
    pub tcp: bool,
    /// TLS (`ssl=on`) with this certificate and private key, both PEM.
    pub tls: Option<(String, String)>,
    /// The `postgres` user's password; TCP connections must then use it
    /// (`scram-sha-256`).
    pub password: Option<String>,
}

/// A port on 127.0.0.1 nothing listens on right now.
pub fn free_tcp_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("finding a free TCP port: {e}"))
}

/// Writes `contents` to `path` for the server's user, mode 0600.
fn write_server_file(path: &Path, contents: &str, as_root: bool) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod 0600 {}: {e}", path.display()))?;
    if as_root {
        command_output("chown", &["postgres", &path.to_string_lossy()])?;
    }
    Ok(())
}

/// Starts a private cluster listening as `options` say. Same supervision
/// and cleanup as [`private_cluster`].
pub fn private_cluster_with(options: &ClusterOptions) -> Result<Cluster, String> {
    let (bin, as_root, runuser, dir) = prepare_cluster()?;
    let fail = |e: String| {
        let _ = fs::remove_dir_all(&dir);
        e
    };
    let mut server = String::new();
    let mut initdb = String::new();
    let mut port = SOCKET_PORT;
    let mut tcp_port = None;
    if options.tcp || options.tls.is_some() {
        port = free_tcp_port().map_err(fail)?;
        tcp_port = Some(port);
        server.push_str(&format!(" -c listen_addresses=127.0.0.1 -c port={port}"));
    }
    if let Some((cert, key)) = &options.tls {
        let cert_path = dir.join("server.crt");
        let key_path = dir.join("server.key");
        write_server_file(&cert_path, cert, as_root).map_err(fail)?;
        write_server_file(&key_path, key, as_root).map_err(fail)?;
        server.push_str(&format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert_path.display(),
            key_path.display()
        ));
    }
    if let Some(password) = &options.password {
        let pwfile = dir.join("pwfile");
        write_server_file(&pwfile, password, as_root).map_err(fail)?;
        initdb.push_str(&format!(
            " --auth-host=scram-sha-256 --pwfile={}",
            pwfile.display()
        ));
    }
    let supervisor = spawn_supervisor_with(&dir, &bin, as_root, &runuser, &server, &initdb)?;
    let mut config = cluster_config(&dir);
    config.port(port);
    Ok(Cluster {
        dir,
        bin,
        as_root,
        runuser,
        supervisor: Some(supervisor),
        config,
        extra_options: server,
        tcp_port,
    })
}

impl Cluster {
    /// Connection settings (unix socket in the cluster's directory).
    pub fn config(&self) -> tokio_postgres::Config {
        self.config.clone()
    }

    /// The cluster's directory (its socket lives there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log: `pg_ctl -l <dir>/server.log` (the supervisor's
    /// start, and [`start`](Self::start) / [`restart`](Self::restart)),
    /// with the server defaults (`log_destination=stderr`,
    /// `logging_collector=off`, `log_min_messages=warning`,
    /// `log_min_error_statement=error`): every `ERROR` a backend raises
    /// is a line there, written before the client gets the error.
    /// Readable by the test process when it runs as the cluster's owner,
    /// or as root (the directory is 0700, the server's user's).
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The TCP port on 127.0.0.1, when the cluster listens there.
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    /// Connection settings over TCP to `host` (e.g. `127.0.0.1` or
    /// `localhost`), when the cluster listens there.
    pub fn tcp_config(&self, host: &str) -> Option<tokio_postgres::Config> {
        let port = self.tcp_port?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
        Some(config)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let mut command = if self.as_root {
            let mut c = Command::new(&self.runuser);
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        command
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(args)
            .stdin(Stdio::null());
        let out = command
            .output()
            .map_err(|e| format!("running pg_ctl {args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {args:?} failed ({}): {} {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Stops the server (fast: open sessions are terminated).
    pub fn stop(&self) -> Result<(), String> {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"])
    }

    /// Starts the server again after [`stop`](Self::stop).
    pub fn start(&self) -> Result<(), String> {
        let options = server_options(&self.dir) + &self.extra_options;
        self.pg_ctl(&["-w", "-t", "60", "-o", &options, "start"])
    }

    /// Restarts the server (fast: open sessions are terminated).
    pub fn restart(&self) -> Result<(), String> {
        let options = server_options(&self.dir) + &self.extra_options;
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "-o", &options, "restart"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the supervisor's stdin makes it stop the server and
        // remove the directory.
        if let Some(mut supervisor) = self.supervisor.take() {
            drop(supervisor.child.stdin.take());
            let _ = supervisor.child.wait();
        }
    }
}
