//! A real PostgreSQL for the integration tests.
//!
//! [`test_database`] gives each test its own fresh, empty database:
//! - with `TEST_DATABASE_URL` set, on that server;
//! - otherwise on one throwaway cluster that this test process starts on first use
//!   (initdb + pg_ctl on a free port) and removes again, directory and all, when it exits.
//!
//! Without any PostgreSQL the tests are skipped with a warning, unless `CI` is `true` or `1`.
//!
//! Every `#[tokio::test]` has its own runtime, so nothing shared here belongs to a runtime:
//! the shared state is plain data, and each call opens its own short-lived admin connection.
//!
//! Creating a database is mostly creating ~300 small files: on a slow disk, `TMPDIR=/dev/shm`
//! (a tmpfs) makes it about ten times faster.

use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// A fresh, empty database for one test, dropped again when this value is dropped.
pub struct TestDatabase {
    /// e.g. `postgres://postgres@127.0.0.1:PORT/todoql_test_<hex>`
    pub url: String,
    name: String,
    admin_url: String,
}

/// Returns None (after printing a loud warning to stderr, once) when no PostgreSQL can be found
/// and CI is not set; panics with a clear message when CI=true (env var CI equal to "true" or
/// "1") and PostgreSQL cannot be found/started.
pub async fn test_database() -> Option<TestDatabase> {
    let external = std::env::var("TEST_DATABASE_URL").ok().filter(|url| !url.trim().is_empty());
    let admin_url = match &external {
        Some(url) => url.clone(),
        None => cluster().await?.admin_url(),
    };
    let client = admin_connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("todoql tests: cannot connect to PostgreSQL at {}: {}", describe(&admin_url), chain(&e))
    });
    if external.is_some() && !ANNOUNCED_EXTERNAL.swap(true, Ordering::SeqCst) {
        let version: String = match client.query_one("SHOW server_version", &[]).await {
            Ok(row) => row.get(0),
            Err(_) => "unknown version".into(),
        };
        say(&format!(
            "todoql tests: using PostgreSQL {version} at {} (TEST_DATABASE_URL)",
            describe(&admin_url)
        ));
    }
    // Random names keep concurrent tests, and concurrent test processes, apart.
    let name = format!("todoql_test_{:016x}", rand::random::<u64>());
    if let Err(e) = client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await {
        let at = describe(&admin_url);
        panic!("todoql tests: cannot create database {name} at {at}: {}", chain(&e));
    }
    Some(TestDatabase { url: with_database(&admin_url, &name), name, admin_url })
}

static ANNOUNCED_EXTERNAL: AtomicBool = AtomicBool::new(false);

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop is sync and may run on (or after) any test's runtime, so the DROP gets a thread
        // and runtime of its own. FORCE disconnects whatever pool the test left open.
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let admin_url = self.admin_url.clone();
        let spawned = std::thread::Builder::new().name("drop-test-db".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let work = async { admin_connect(&admin_url).await?.batch_execute(&sql).await };
                match tokio::time::timeout(Duration::from_secs(30), work).await {
                    Ok(done) => done.map_err(|e| chain(&e)),
                    Err(_) => Err("timed out".to_string()),
                }
            })
        });
        let outcome = match spawned {
            Ok(handle) => handle.join().unwrap_or_else(|_| Err("thread panicked".into())),
            Err(e) => Err(e.to_string()),
        };
        // A leftover database is harmless (the cluster goes away anyway): warn, never panic.
        if let Err(e) = outcome {
            say(&format!("todoql tests: could not drop test database {}: {e}", self.name));
        }
    }
}

async fn admin_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let (client, connection) = config.connect(NoTls).await?;
    // Runs on the caller's runtime and ends once `client` is dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // key=value form: a repeated key overrides the earlier one.
        return format!("{url} dbname={db}");
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let query = rest[authority_end..].find('?').map_or("", |i| &rest[authority_end + i..]);
    format!("{}{}/{db}{query}", &url[..scheme_end], &rest[..authority_end])
}

/// host:port of a connection string, without the password that it may carry.
fn describe(url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "(unparsable connection string)".into();
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".into(),
    };
    format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432))
}

/// An error with its causes: tokio-postgres' own message is just "db error".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

/// Writes straight to stderr: libtest captures `eprintln!` output of passing tests.
fn say(message: &str) {
    let _ = writeln!(io::stderr().lock(), "{message}");
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

// ---------------------------------------------------------------------------------------------
// The throwaway cluster, one per test process.

struct Cluster {
    port: u16,
    pg: Pg,
    dir: PathBuf,
}

enum StartError {
    /// No PostgreSQL installed: tests may be skipped outside CI.
    NotFound(String),
    /// PostgreSQL is there but would not start: always an error.
    Failed(String),
}

static CLUSTER: OnceLock<Result<Cluster, StartError>> = OnceLock::new();

/// What the exit handler needs to stop and remove the cluster.
static CLEANUP: OnceLock<ClusterFiles> = OnceLock::new();

static WARN_NOT_FOUND: Once = Once::new();

async fn cluster() -> Option<&'static Cluster> {
    // Start-up is blocking process work: keep it off the async workers. Concurrent callers
    // wait inside OnceLock for the first one.
    let started = tokio::task::spawn_blocking(|| CLUSTER.get_or_init(Cluster::start))
        .await
        .expect("todoql tests: PostgreSQL start-up panicked");
    match started {
        Ok(cluster) => Some(cluster),
        Err(StartError::NotFound(why)) if !in_ci() => {
            WARN_NOT_FOUND.call_once(|| {
                say(&format!(
                    "\n{bar}\n!! todoql tests: NO PostgreSQL FOUND - PostgreSQL tests are SKIPPED\n\
                     !! {why}\n\
                     !! Install PostgreSQL (e.g. apt-get install postgresql) or set \
                     TEST_DATABASE_URL.\n!! With CI=true this is an error.\n{bar}\n",
                    bar = "!".repeat(78)
                ));
            });
            None
        }
        Err(StartError::NotFound(why)) => {
            panic!("todoql tests: CI is set but no PostgreSQL was found: {why}")
        }
        Err(StartError::Failed(why)) => panic!("todoql tests: cannot start PostgreSQL: {why}"),
    }
}

impl Cluster {
    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start() -> Result<Cluster, StartError> {
        let began = Instant::now();
        let bin = find_bin_dir().ok_or_else(|| {
            StartError::NotFound("no initdb and pg_ctl on PATH or under /usr/lib/postgresql/*/bin".into())
        })?;
        let failed = |what: &str, e: &dyn std::fmt::Display| StartError::Failed(format!("{what}: {e}"));
        let pg = Pg { bin, run_as: run_as_user().map_err(StartError::Failed)? };
        let version = run(pg.command("pg_ctl").arg("--version")).map_err(StartError::Failed)?;
        let version = version.trim().replace("pg_ctl (PostgreSQL)", "PostgreSQL");

        // Shared by everyone's test runs (root's in CI, a developer's locally), like /tmp.
        let base = std::env::temp_dir().join("todoql-test-pg");
        fs::create_dir_all(&base).map_err(|e| failed("cannot create the test directory", &e))?;
        if fs::metadata(&base).is_ok_and(|m| m.uid() == euid()) {
            let _ = fs::set_permissions(&base, fs::Permissions::from_mode(0o1777));
        }
        sweep_stale_clusters(&base, &pg);

        let dir = base.join(std::process::id().to_string());
        fs::create_dir(&dir).map_err(|e| failed("cannot create the cluster directory", &e))?;
        if let Some(user) = &pg.run_as {
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                .map_err(|e| failed("cannot chown the cluster directory", &e))?;
            make_traversable(&base).map_err(|e| failed("cannot open up the temp directory", &e))?;
        }
        // Registered before anything runs in `dir`, so a failed start is cleaned up too.
        let _ = CLEANUP.set(ClusterFiles { pg: pg.clone(), dir: dir.clone(), owner_pid: std::process::id() });
        // SAFETY: registers a plain extern "C" fn that never unwinds.
        if unsafe { libc::atexit(stop_cluster_at_exit) } != 0 {
            return Err(StartError::Failed("atexit failed".into()));
        }

        let data = dir.join("data");
        run(pg.command("initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]))
        .map_err(StartError::Failed)?;

        let port = start_server(&pg, &data, &dir.join("postgres.log"))?;
        say(&format!(
            "todoql tests: using {} ({}) on 127.0.0.1:{port}{}, data in {}; started in {:.2?}",
            version,
            // Symlinks resolved, to name the real installation.
            fs::canonicalize(pg.bin.join("pg_ctl")).unwrap_or_else(|_| pg.bin.join("pg_ctl")).display(),
            pg.run_as.as_ref().map_or(String::new(), |u| format!(" as user {}", u.name)),
            dir.display(),
            began.elapsed(),
        ));
        Ok(Cluster { port, pg, dir })
    }
}

/// Stops (`-m fast`, as an operator would) or starts again this process's own
/// cluster, on the same port, for tests of outages. `false` when the tests
/// run against `TEST_DATABASE_URL` (not ours to stop) or without PostgreSQL.
#[allow(dead_code)]
pub async fn set_cluster_running(running: bool) -> bool {
    if std::env::var_os("TEST_DATABASE_URL").is_some() {
        return false;
    }
    let Some(cluster) = cluster().await else { return false };
    let (pg, dir, port) = (cluster.pg.clone(), cluster.dir.clone(), cluster.port);
    tokio::task::spawn_blocking(move || {
        let data = dir.join("data");
        let result = if running {
            let options = format!(
                "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
                data.display()
            );
            run(pg
                .command("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .args(["-o", &options]))
        } else {
            run(pg.command("pg_ctl").args(["stop", "-m", "fast", "-w", "-D"]).arg(&data))
        };
        result.unwrap_or_else(|e| panic!("todoql tests: pg_ctl failed: {e}"));
    })
    .await
    .expect("pg_ctl task");
    true
}

/// Starts the server on a free port; returns the port.
fn start_server(pg: &Pg, data: &Path, log: &Path) -> Result<u16, StartError> {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        // Another process may grab the port between here and the server's bind: then retry.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| StartError::Failed(format!("no free port: {e}")))?
            .port();
        // The socket lives in the data dir: the default one may not exist or be writable.
        let options = format!(
            "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
            data.display()
        );
        let _ = fs::remove_file(log); // so the log read below is this attempt's only
        let started = run(pg
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(data)
            .arg("-l")
            .arg(log)
            .args(["-o", &options]));
        match started {
            Ok(_) => return Ok(port),
            Err(e) => {
                let log_text = fs::read_to_string(log).unwrap_or_default();
                if !(log_text.contains("already in use") && attempt < ATTEMPTS) {
                    return Err(StartError::Failed(format!("{e}\n--- {} ---\n{log_text}", log.display())));
                }
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// initdb, pg_ctl and their directory, run as `run_as` when we are root.
#[derive(Clone)]
struct Pg {
    bin: PathBuf,
    run_as: Option<User>,
}

#[derive(Clone)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl Pg {
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new(find_program("runuser").unwrap_or_else(|| "runuser".into()));
                c.args(["-u", &user.name, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // The unprivileged user may not be allowed into our working directory.
        command.current_dir("/").stdin(Stdio::null());
        command
    }
}

/// Runs to completion; Ok(stdout), or Err with everything it printed.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// initdb and pg_ctl refuse to run as root, so root runs them as `postgres` (there with
/// Debian's package) or else `nobody`.
fn run_as_user() -> Result<Option<User>, String> {
    if euid() != 0 {
        return Ok(None);
    }
    if find_program("runuser").is_none() {
        return Err("running as root, but runuser (util-linux) is missing".into());
    }
    lookup_user("postgres")
        .or_else(|| lookup_user("nobody"))
        .map(Some)
        .ok_or_else(|| "running as root, but there is no user postgres or nobody".into())
}

fn lookup_user(name: &str) -> Option<User> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns NULL or a pointer to a static record that we copy right away;
    // only called during start-up, which OnceLock runs once at a time.
    let record = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if record.is_null() {
        return None;
    }
    let (uid, gid) = unsafe { ((*record).pw_uid, (*record).pw_gid) };
    Some(User { name: name.into(), uid, gid })
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The unprivileged user needs to pass through every parent directory of the cluster.
fn make_traversable(dir: &Path) -> io::Result<()> {
    for ancestor in dir.ancestors() {
        let mode = fs::metadata(ancestor)?.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | 0o001))?;
            say(&format!("todoql tests: added o+x to {} for the PostgreSQL user", ancestor.display()));
        }
    }
    Ok(())
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A directory with initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/N/bin.
fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path).find(|dir| has_tools(dir)) {
        return Some(dir);
    }
    // Major versions before 10 ("9.6") do not parse and are skipped: DROP ... WITH (FORCE)
    // needs 13 anyway.
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

// ---------------------------------------------------------------------------------------------
// Clean-up: at exit for our own cluster, at start-up for those of killed runs.

struct ClusterFiles {
    pg: Pg,
    dir: PathBuf,
    owner_pid: u32,
}

/// libtest ends the process with `std::process::exit` (or by returning from main), both of
/// which run atexit handlers; statics are never dropped, so this is the hook that is left.
extern "C" fn stop_cluster_at_exit() {
    if let Some(files) = CLEANUP.get() {
        // A forked child that exits must not take its parent's cluster down.
        if files.owner_pid == std::process::id() {
            stop_and_remove(&files.pg, &files.dir);
        }
    }
}

/// Removes the clusters under `base` whose test process is gone (SIGKILL, Ctrl-C, abort).
fn sweep_stale_clusters(base: &Path, pg: &Pg) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        // A directory named after our own pid is a leftover of an earlier process with it.
        if pid as u32 != std::process::id() && pid_alive(pid) {
            continue;
        }
        stop_and_remove(pg, &entry.path());
        if !entry.path().exists() {
            say(&format!("todoql tests: removed stale test cluster {}", entry.path().display()));
        }
    }
}

fn stop_and_remove(pg: &Pg, dir: &Path) {
    let data = dir.join("data");
    if postmaster_running(&data) {
        // Immediate: the data is thrown away, so no shutdown checkpoint is needed.
        let _ = pg
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_dir_all(dir);
}

/// Whether postmaster.pid names a live postgres process. pg_ctl signals whatever process has
/// that pid now, which after a reboot or a long time may be an unrelated one.
fn postmaster_running(data: &Path) -> bool {
    let Ok(text) = fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text.lines().next().and_then(|line| line.trim().parse().ok()) else {
        return false;
    };
    // Without /proc (not Linux), trust the pid file.
    let is_postgres = |comm: String| matches!(comm.trim(), "postgres" | "postmaster");
    pid_alive(pid) && fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, is_postgres)
}

fn pid_alive(pid: i32) -> bool {
    // kill(0 or negative, ..) would address process groups.
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let delivered = unsafe { libc::kill(pid, 0) } == 0;
    delivered || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
