// One file of this length: one cluster's life cycle (initdb, start, stop, restart, the reaper) over one struct.
//! Throwaway PostgreSQL clusters for tests, examples and local development.
//!
//! [`EmbeddedPostgres::start`] runs `initdb` and `postgres` from the binaries
//! found on `PATH` (or `/usr/lib/postgresql/*/bin`, newest first, or
//! `$WALFLOW_PG_BIN_DIR`; PostgreSQL 15 or newer) in a temporary directory and
//! configures the server for logical replication:
//!
//! - `wal_level = logical`, `max_replication_slots = 64`,
//!   `max_wal_senders = 64`, `max_slot_wal_keep_size = 4GB`,
//!   `max_connections = 200`;
//! - listening on `127.0.0.1` only, on a free port, plus a unix socket inside
//!   the temporary directory;
//! - a random password for the `postgres` superuser, stored as SCRAM-SHA-256;
//!   TCP connections (normal and replication) must authenticate with
//!   `scram-sha-256`, the unix socket is trusted;
//! - `fsync` and `full_page_writes` off, `timezone = UTC`. `synchronous_commit`
//!   stays on: with `fsync` off it costs little, and a commit acknowledged
//!   before a [`crash`](EmbeddedPostgres::crash) survives it.
//!
//! Any setting can be overridden with [`EmbeddedPostgresBuilder::setting`].
//!
//! When the process runs as root (as CI often does), `initdb` and `postgres`
//! refuse to run, so both are run as the `postgres` OS user, which must exist;
//! the temporary directory is handed over to it.
//!
//! The server never outlives the process: every cluster has a small reaper
//! process (`sh`) waiting for end-of-file on a pipe whose write end only this
//! process holds. When the process exits, however abruptly, the pipe closes
//! and the reaper shuts the server down (immediate mode) and removes the
//! directory. This matters for the cluster shared by [`test_database`], which
//! lives in a `static` and is never dropped.
//!
//! # Why not `pgtemp`
//!
//! The `pgtemp` crate (0.7) was evaluated and not used: as root it runs
//! `initdb`/`postgres` through `sudo`, which CI images usually lack; it waits
//! for start-up with a fixed sleep, panics instead of returning errors,
//! cannot restart or crash the server on the same port and data directory,
//! leaves the server running when the handle is never dropped (a `static`), and
//! leaves the authentication to `initdb`'s defaults. The code needed here is
//! small, so it is written directly on `std::process`.

mod bins;
#[cfg(test)]
mod cluster_tests;
mod test_db;

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

pub use bins::BIN_DIR_ENV;
pub use test_db::{TestDatabase, shared_cluster, test_database, test_server_url};

use crate::ident::quote_ident;

/// Errors of the embedded cluster. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    /// No usable `initdb`/`postgres` pair was found.
    #[error(
        "no PostgreSQL {min}+ server binaries (`initdb` and `postgres`) found; searched {searched}, found {found}; install PostgreSQL {min} or newer or set `{env}` to its bin directory",
        min = bins::MIN_MAJOR,
        env = BIN_DIR_ENV
    )]
    BinariesNotFound {
        /// Where the binaries were looked for.
        searched: String,
        /// What was found there, and why it was not usable.
        found: String,
    },
    /// Running as root without a `postgres` OS user.
    #[error(
        "running as root, but there is no `postgres` OS user to run `initdb` and `postgres` as (they refuse root); create it (`useradd --system postgres`) or run as another user"
    )]
    NoPostgresUser,
    /// A file-system or process operation failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `initdb` failed.
    #[error("`initdb` failed ({status}): {output}")]
    Initdb {
        /// Its exit status.
        status: ExitStatus,
        /// Its output.
        output: String,
    },
    /// The server did not start.
    #[error("PostgreSQL did not start: {reason}; server log:\n{log}")]
    Start {
        /// What went wrong.
        reason: String,
        /// The end of the server log.
        log: String,
    },
    /// The server is stopped (see [`EmbeddedPostgres::start_again`]).
    #[error("the embedded PostgreSQL server is stopped; call `start_again` first")]
    NotRunning,
    /// A SQL statement failed.
    #[error("cannot {action}: {}", crate::pg_error::DbError(.source))]
    Sql {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// `DATABASE_URL` cannot be used.
    #[error(
        "invalid `DATABASE_URL` {url}: {reason}; use postgres://user:password@host:port/database"
    )]
    DatabaseUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The process-wide shared cluster failed to start (the first error is
    /// repeated to every caller).
    #[error("the shared embedded PostgreSQL cluster failed to start: {0}")]
    Shared(String),
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let action = action.into();
    move |source| EmbeddedError::Io { action, source }
}

/// How to stop the server; see PostgreSQL's "Shutting Down the Server".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// `SIGTERM`: wait for clients to disconnect.
    Smart,
    /// `SIGINT`: disconnect clients, roll back, checkpoint, exit.
    Fast,
    /// `SIGQUIT`: exit at once, like a crash; the next start runs recovery.
    Immediate,
}

impl ShutdownMode {
    fn signal(self) -> libc::c_int {
        match self {
            ShutdownMode::Smart => libc::SIGTERM,
            ShutdownMode::Fast => libc::SIGINT,
            ShutdownMode::Immediate => libc::SIGQUIT,
        }
    }
}

/// Options of an [`EmbeddedPostgres`] cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedPostgresBuilder {
    settings: Vec<(String, String)>,
    bin_dir: Option<PathBuf>,
    timeout: Duration,
}

impl Default for EmbeddedPostgresBuilder {
    fn default() -> Self {
        Self {
            settings: Vec::new(),
            bin_dir: None,
            timeout: Duration::from_secs(60),
        }
    }
}

impl EmbeddedPostgresBuilder {
    /// Sets a server setting (`postgresql.conf` syntax for the value, without
    /// quotes), overriding walflow's defaults, e.g.
    /// `.setting("wal_level", "replica")`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Uses the binaries of `dir` instead of searching for them.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Bound on `initdb` plus start-up, and on each later start (default
    /// 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Creates and starts the cluster on a blocking thread.
    pub async fn start(self) -> Result<EmbeddedPostgres, EmbeddedError> {
        tokio::task::spawn_blocking(move || self.start_blocking())
            .await
            .map_err(|e| EmbeddedError::Start {
                reason: format!("start-up task failed: {e}"),
                log: String::new(),
            })?
    }

    /// Creates and starts the cluster, blocking the current thread (a second
    /// or two, mostly `initdb`).
    pub fn start_blocking(self) -> Result<EmbeddedPostgres, EmbeddedError> {
        let bins = bins::find(self.bin_dir.as_deref())?;
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user("postgres").ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        let tmp = tempfile::Builder::new()
            .prefix("walflow-pg-")
            .tempdir_in(temp_parent(run_as.is_some()))
            .map_err(io_err("create a temporary directory"))?;
        let root = tmp.path().to_path_buf();
        let data_dir = root.join("data");
        let log_path = root.join("postgres.log");
        let chown = |p: &Path| -> Result<(), EmbeddedError> {
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(io_err(format!("hand {} to the postgres user", p.display())))?;
            }
            Ok(())
        };
        chown(&root)?;
        // Only now that the directory exists: the reaper removes it.
        let reaper = Reaper::spawn(&data_dir, &root)?;

        let password = random_hex(16)?;
        let username = "postgres".to_string();
        let pwfile = root.join("pwfile");
        fs::write(&pwfile, &password).map_err(io_err("write the password file"))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))
            .map_err(io_err("restrict the password file"))?;
        chown(&pwfile)?;

        let mut initdb = Command::new(bins.dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .arg("-U")
            .arg(&username)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(&root)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().map_err(io_err("run `initdb`"))?;
        let _ = fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(EmbeddedError::Initdb {
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        fs::write(
            data_dir.join("pg_hba.conf"),
            "# written by walflow's embedded cluster\n\
             local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication all 127.0.0.1/32 scram-sha-256\n",
        )
        .map_err(io_err("write pg_hba.conf"))?;
        chown(&data_dir.join("pg_hba.conf"))?;
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(data_dir.join("postgresql.conf"))
            .map_err(io_err("open postgresql.conf"))?;
        conf.write_all(b"\ninclude 'walflow.conf'\n")
            .map_err(io_err("write postgresql.conf"))?;
        drop(conf);

        let inner = Inner {
            tmp: Mutex::new(Some(tmp)),
            root,
            data_dir,
            bin_dir: bins.dir,
            version: bins.version,
            port: Mutex::new(0),
            username,
            password,
            log_path,
            run_as,
            timeout: self.timeout,
            settings: self.settings,
            postmaster: Mutex::new(None),
            reaper: Mutex::new(Some(reaper)),
        };
        // Another process may grab the port between our probe and the
        // server's bind; retry with a new one.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            *lock(&inner.port) = port;
            inner.write_settings(port, &inner.settings)?;
            match inner.start_postmaster() {
                Ok(()) => break,
                Err(EmbeddedError::Start { ref log, .. })
                    if attempt < 5
                        && (log.contains("could not bind")
                            || log.contains("could not create any TCP/IP sockets")) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(EmbeddedPostgres {
            inner: Arc::new(inner),
        })
    }
}

/// A running throwaway PostgreSQL cluster. Dropping it stops the server
/// (fast shutdown) and removes its directory, also during a panic.
///
/// Clones are handles to the same cluster; it stops when the last one is
/// dropped.
#[derive(Clone)]
pub struct EmbeddedPostgres {
    inner: Arc<Inner>,
}

impl EmbeddedPostgres {
    /// Starts a cluster with the default settings.
    pub async fn start() -> Result<Self, EmbeddedError> {
        Self::builder().start().await
    }

    /// A builder to override settings.
    pub fn builder() -> EmbeddedPostgresBuilder {
        EmbeddedPostgresBuilder::default()
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of another database of this cluster.
    pub fn url_for(&self, database: &str) -> String {
        let mut url = url::Url::parse(&format!(
            "postgres://{}:{}@127.0.0.1:{}",
            self.inner.username,
            self.inner.password,
            self.port()
        ))
        .expect("static URL shape");
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(database);
        }
        url.into()
    }

    /// The superuser's name (`postgres`).
    pub fn username(&self) -> &str {
        &self.inner.username
    }

    /// The superuser's password (random, hexadecimal).
    pub fn password(&self) -> &str {
        &self.inner.password
    }

    /// The TCP port, on `127.0.0.1`; it does not change across restarts.
    pub fn port(&self) -> u16 {
        *lock(&self.inner.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The temporary directory holding everything (data directory, log,
    /// socket); removed when the cluster is dropped.
    pub fn root_dir(&self) -> &Path {
        &self.inner.root
    }

    /// The directory holding the unix socket (`.s.PGSQL.<port>`), the
    /// [`root_dir`](Self::root_dir); `None` if its path is too long for a
    /// socket address, in which case only TCP is available.
    pub fn socket_dir(&self) -> Option<&Path> {
        socket_fits(&self.inner.root).then_some(self.inner.root.as_path())
    }

    /// The directory of the `postgres` and `initdb` binaries used.
    pub fn bin_dir(&self) -> &Path {
        &self.inner.bin_dir
    }

    /// The server version, e.g. `15.18`.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.inner.log_path
    }

    /// The process id of the running postmaster, if the server is running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        lock(&self.inner.postmaster).as_ref().map(Child::id)
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        let mut pm = lock(&self.inner.postmaster);
        match pm.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                *pm = None;
                false
            }
            None => false,
        }
    }

    /// Creates a database and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, EmbeddedError> {
        let mut conn =
            PgConnection::connect(&self.url())
                .await
                .map_err(|source| EmbeddedError::Sql {
                    action: "connect to the embedded cluster".into(),
                    source,
                })?;
        conn.execute(AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_ident(name)
        )))
        .await
        .map_err(|source| EmbeddedError::Sql {
            action: format!("create database {}", quote_ident(name)),
            source,
        })?;
        let _ = conn.close().await;
        Ok(self.url_for(name))
    }

    /// Stops the server, waiting until the postmaster has exited. Stopping a
    /// stopped server does nothing. A smart or fast shutdown that takes longer
    /// than the builder's timeout is escalated to immediate, then to
    /// `SIGKILL`.
    pub async fn stop(&self, mode: ShutdownMode) -> Result<(), EmbeddedError> {
        let inner = self.inner.clone();
        blocking(move || inner.stop(mode)).await
    }

    /// Starts the stopped server again, same port and data directory (after
    /// an immediate shutdown it runs crash recovery first). Starting a
    /// running server does nothing.
    pub async fn start_again(&self) -> Result<(), EmbeddedError> {
        let inner = self.inner.clone();
        blocking(move || inner.start_postmaster()).await
    }

    /// Stops the server with `mode` and starts it again.
    pub async fn restart(&self, mode: ShutdownMode) -> Result<(), EmbeddedError> {
        let inner = self.inner.clone();
        blocking(move || {
            inner.stop(mode)?;
            inner.start_postmaster()
        })
        .await
    }

    /// Kills the server as a crash would (immediate shutdown: no checkpoint,
    /// every connection dropped at once).
    #[doc(hidden)]
    pub async fn crash(&self) -> Result<(), EmbeddedError> {
        self.stop(ShutdownMode::Immediate).await
    }
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("port", &self.port())
            .field("data_dir", &self.inner.data_dir)
            .field("bin_dir", &self.inner.bin_dir)
            .field("version", &self.inner.version)
            .field("username", &self.inner.username)
            .field("password", &"<redacted>")
            .field("postmaster_pid", &self.postmaster_pid())
            .finish()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EmbeddedError> + Send + 'static,
) -> Result<T, EmbeddedError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EmbeddedError::Io {
            action: "run a blocking task".into(),
            source: io::Error::other(e.to_string()),
        })?
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner {
    tmp: Mutex<Option<tempfile::TempDir>>,
    root: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    version: String,
    port: Mutex<u16>,
    username: String,
    password: String,
    log_path: PathBuf,
    run_as: Option<(u32, u32)>,
    timeout: Duration,
    settings: Vec<(String, String)>,
    postmaster: Mutex<Option<Child>>,
    reaper: Mutex<Option<Reaper>>,
}

/// Polling period of the start and stop waits.
const POLL: Duration = Duration::from_millis(10);

fn conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

impl Inner {
    fn write_settings(
        &self,
        port: u16,
        overrides: &[(String, String)],
    ) -> Result<(), EmbeddedError> {
        // An empty list disables the socket when its path would not fit.
        let root = if socket_fits(&self.root) {
            self.root.display().to_string()
        } else {
            String::new()
        };
        let port = port.to_string();
        let defaults: [(&str, &str); 14] = [
            ("listen_addresses", "127.0.0.1"),
            ("port", &port),
            ("unix_socket_directories", &root),
            ("wal_level", "logical"),
            ("max_replication_slots", "64"),
            ("max_wal_senders", "64"),
            ("max_slot_wal_keep_size", "4GB"),
            ("max_connections", "200"),
            ("password_encryption", "scram-sha-256"),
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("timezone", "UTC"),
            ("log_timezone", "UTC"),
            ("logging_collector", "off"),
        ];
        let mut text = String::from("# written by walflow's embedded cluster\n");
        for (k, v) in defaults
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain(overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        {
            text.push_str(&format!("{k} = {}\n", conf_value(v)));
        }
        let path = self.data_dir.join("walflow.conf");
        fs::write(&path, text).map_err(io_err("write walflow.conf"))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(io_err("hand walflow.conf to the postgres user"))?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn start_error(&self, reason: impl Into<String>) -> EmbeddedError {
        EmbeddedError::Start {
            reason: reason.into(),
            log: self.log_tail(),
        }
    }

    /// Starts the postmaster if it is not running and waits until it accepts
    /// connections.
    fn start_postmaster(&self) -> Result<(), EmbeddedError> {
        let mut pm = lock(&self.postmaster);
        if let Some(child) = pm.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
            *pm = None;
        }
        // A stale lock file left by a killed postmaster would block the start.
        remove_stale_pid_file(&self.data_dir);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err("open the server log"))?;
        let log2 = log.try_clone().map_err(io_err("open the server log"))?;
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(io_err("run `postgres`"))?;
        let port = *lock(&self.port);
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(self.start_error(format!("the postmaster exited ({status})")));
            }
            if postmaster_ready(&self.data_dir, child.id())
                && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            {
                *pm = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.start_error(format!("not ready after {:?}", self.timeout)));
            }
            std::thread::sleep(POLL);
        }
    }

    fn stop(&self, mode: ShutdownMode) -> Result<(), EmbeddedError> {
        self.stop_within(mode, self.timeout)
    }

    /// Stops with `mode`, escalating to immediate after `limit`.
    fn stop_within(&self, mode: ShutdownMode, limit: Duration) -> Result<(), EmbeddedError> {
        let mut pm = lock(&self.postmaster);
        let Some(mut child) = pm.take() else {
            return Ok(());
        };
        let mut plan = vec![(mode, limit)];
        if mode != ShutdownMode::Immediate {
            plan.push((ShutdownMode::Immediate, Duration::from_secs(15)));
        }
        for (mode, limit) in plan {
            signal(child.id(), mode.signal());
            if wait_exit(&mut child, limit)? {
                return Ok(());
            }
        }
        let _ = child.kill();
        child.wait().map_err(io_err("wait for the postmaster"))?;
        remove_stale_pid_file(&self.data_dir);
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The data is thrown away: do not wait long for a fast shutdown (a
        // logical WAL sender whose client does not acknowledge can hold it up
        // to `wal_sender_timeout`).
        let _ = self.stop_within(ShutdownMode::Fast, Duration::from_secs(5));
        // Closing the pipe lets the reaper remove the directory.
        drop(lock(&self.reaper).take());
        if let Some(tmp) = lock(&self.tmp).take() {
            let _ = tmp.close();
        }
    }
}

/// Waits up to `limit` for `child` to exit; `Ok(false)` on time-out.
fn wait_exit(child: &mut Child, limit: Duration) -> Result<bool, EmbeddedError> {
    let deadline = Instant::now() + limit;
    loop {
        if child
            .try_wait()
            .map_err(io_err("wait for a child process"))?
            .is_some()
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(POLL);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Whether `postmaster.pid` names `pid` and says `ready` (PostgreSQL 10+
/// writes its status on the eighth line).
fn postmaster_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let mut lines = text.lines();
    lines.next().map(str::trim) == Some(pid.to_string().as_str())
        && lines.nth(6).map(str::trim) == Some("ready")
}

/// Removes `postmaster.pid` if the process it names is gone (or a zombie).
fn remove_stale_pid_file(data_dir: &Path) {
    let path = data_dir.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&path) else {
        return;
    };
    let alive = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
        .is_some_and(process_alive);
    if !alive {
        let _ = fs::remove_file(path);
    }
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A process that stops the server and removes the directory once this
/// process has gone (end of file on its stdin).
#[derive(Debug)]
struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

const REAPER_SCRIPT: &str = r#"
cat >/dev/null
pidfile="$1/postmaster.pid"
if [ -f "$pidfile" ]; then
  pid=$(head -n 1 "$pidfile")
  kill -QUIT "$pid" 2>/dev/null
  i=0
  while [ -f "$pidfile" ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i+1)); done
  if [ -f "$pidfile" ]; then kill -KILL "$pid" 2>/dev/null; fi
fi
rm -rf "$2"
"#;

impl Reaper {
    fn spawn(data_dir: &Path, root: &Path) -> Result<Self, EmbeddedError> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(REAPER_SCRIPT)
            .arg("walflow-pg-reaper")
            .arg(data_dir)
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a terminal's Ctrl-C must not kill it first.
            .process_group(0)
            .spawn()
            .map_err(io_err("start the clean-up process (/bin/sh)"))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = wait_exit(&mut self.child, Duration::from_secs(10));
    }
}

/// Whether `<dir>/.s.PGSQL.65535` fits in a unix socket address (107
/// bytes on Linux).
fn socket_fits(dir: &Path) -> bool {
    dir.as_os_str().len() + "/.s.PGSQL.65535".len() < 107
}

/// Where to create the temporary directory: the system's, unless it is not
/// reachable by the `postgres` user we switch to, then `/tmp`.
fn temp_parent(as_other_user: bool) -> PathBuf {
    let dir = std::env::temp_dir();
    if !as_other_user {
        return dir;
    }
    let traversable = dir.ancestors().all(|p| {
        p.metadata()
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    if traversable {
        dir
    } else {
        PathBuf::from("/tmp")
    }
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("find a free port"))?
        .port())
}

fn random_hex(bytes: usize) -> Result<String, EmbeddedError> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io_err("read /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The uid and gid of an OS user.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value
    // for getpwnam_r to overwrite.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and
    // `buf.len()` is the size of `buf`.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

#[cfg(test)]
mod tests;
