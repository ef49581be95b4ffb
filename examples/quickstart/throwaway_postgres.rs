//! A throwaway local PostgreSQL for the demo when `DATABASE_URL` is unset:
//! `initdb` into a temporary directory, the server on a Unix socket there,
//! everything removed when the demo exits (even on Ctrl-C: a supervisor
//! shell stops the server when the demo's end of its stdin closes). Not
//! part of the service code; a service has its database.
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Runs the server tools as `postgres` when the demo runs as root
/// (`initdb` refuses root), stops and removes the cluster on EOF.
const SUPERVISOR: &str = r#"
set -u
dir=$1 bin=$2 as_postgres=$3
trap '' INT HUP QUIT TERM PIPE
run() { if [ "$as_postgres" = 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
fail() { echo "$1" >&2; tail -n 20 "$dir"/*.log >&2 2>/dev/null; rm -rf "$dir"; exit 1; }
run "$bin/initdb" -D "$dir/data" -A trust --no-sync -U postgres -E UTF8 --locale=C \
  </dev/null >"$dir/initdb.log" 2>&1 || fail "initdb failed"
run "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-k '$dir' -c listen_addresses='' -c fsync=off -c max_connections=100" \
  start </dev/null >"$dir/pg_ctl.log" 2>&1 || fail "pg_ctl start failed"
echo ready
read _ || true
exec </dev/null >/dev/null 2>&1
run "$bin/pg_ctl" -D "$dir/data" -m immediate stop
rm -rf "$dir"
"#;

/// A running throwaway server; dropping it stops and removes it.
pub struct ThrowawayPostgres {
    supervisor: Child,
    dir: PathBuf,
}

impl ThrowawayPostgres {
    pub fn start() -> Result<Self, String> {
        let bin = server_binaries().ok_or(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; \
             install PostgreSQL or set DATABASE_URL",
        )?;
        let dir = std::env::temp_dir().join(format!("poolwatch-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        let as_root = running_as_root();
        if as_root {
            // initdb refuses root: the server runs as `postgres`, in a
            // directory it owns.
            let chown = Command::new("chown").arg("postgres").arg(&dir).status();
            if !chown.is_ok_and(|s| s.success()) {
                return Err(format!("chown postgres {} failed", dir.display()));
            }
        }
        let mut supervisor = Command::new("sh")
            .args(["-c", SUPERVISOR, "poolwatch-demo-postgres"])
            .arg(&dir)
            .arg(&bin)
            .arg(if as_root { "1" } else { "0" })
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting the PostgreSQL supervisor: {e}"))?;
        let mut line = String::new();
        let stdout = supervisor.stdout.take().expect("piped");
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let _ = supervisor.wait();
            return Err("the throwaway PostgreSQL did not start (see above)".to_owned());
        }
        Ok(Self { supervisor, dir })
    }

    /// Connection settings in `tokio_postgres::Config`'s key=value form.
    pub fn url(&self) -> String {
        format!("host={} user=postgres dbname=postgres", self.dir.display())
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        drop(self.supervisor.stdin.take()); // EOF: stop and clean up
        let _ = self.supervisor.wait();
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn has(dir: &Path, tool: &str) -> bool {
    dir.join(tool).is_file()
}

fn server_binaries() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path)
        .filter(|d| has(d, "initdb") && has(d, "pg_ctl"))
        .filter_map(|d| std::fs::canonicalize(d.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|d| has(d, "postgres"));
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, bin)| has(bin, "initdb") && has(bin, "postgres"))
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}
