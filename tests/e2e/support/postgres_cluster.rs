//! A PostgreSQL primary and a streaming standby of the test's own, for tests that crash a server
//! and promote another. The shared server on 127.0.0.1:5432 is never touched: these are started
//! from the server programs on the machine (`PAYGATE_TEST_PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/<version>/bin`, where Debian's packages and so `scripts/test` put them,
//! else `initdb`'s directory on `PATH`), on free ports, with every file in one temp dir.
//!
//! PostgreSQL refuses to run as root. Under root the servers run as the `postgres` user (the
//! packages create it), which is given the temp dir; under any other user, as that user.
//!
//! A crash is SIGKILL to the postmaster and every process it forked, by PID, at once, as when its
//! machine dies: the postmaster is stopped (SIGSTOP: it forks nothing more), its children are
//! read from /proc (their parent is its PID; each is a process group of its own, PostgreSQL's
//! doing, so a group kill would miss them), and one `kill -KILL` takes them all. Dropping a server
//! does the same, waits until none of its processes is left, and removes the SysV shared memory
//! segment a killed postmaster leaves behind (its id is in `postmaster.pid`); dynamic shared memory
//! is kept in the data directory (`dynamic_shared_memory_type=mmap`), not in /dev/shm. So nothing
//! outlives the test: no process, no segment, no file. (Should the test process itself be killed,
//! its process group, which the postmaster stays in, gets the signal too: ^C stops the servers.)

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::unix::{fs::chown, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{Connection, Executor, PgConnection, Row};

use super::{Backend, TestDb, proxy::TcpProxy};

/// The standby's `application_name`, which the primary's `synchronous_standby_names` names.
pub const STANDBY_NAME: &str = "failover_standby";

impl TestDb {
    /// A database on a server of the test's own (`PgCluster`): nothing to drop afterwards, the
    /// server and its files go with the test.
    pub fn on_own_server(url: &str) -> Self {
        let master_key = Some(paygate::secrets::MasterKeys::generate());
        Self { backend: Backend::Postgres, url: url.to_owned(), master_key, pg_name: None, _dir: None }
    }
}

/// Where the PostgreSQL server programs are, if anywhere. A `PAYGATE_TEST_PG_BINDIR` without them
/// is a mistake, and says so.
pub fn server_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| ["postgres", "initdb", "pg_basebackup"].iter().all(|p| dir.join(p).is_file());
    if let Some(dir) = std::env::var_os("PAYGATE_TEST_PG_BINDIR").map(PathBuf::from) {
        assert!(complete(&dir), "PAYGATE_TEST_PG_BINDIR={} has no postgres, initdb and pg_basebackup", dir.display());
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| complete(dir))
}

/// Whom the servers run as: `None` for the current user, unless that is root (which PostgreSQL
/// refuses); then the `postgres` user's (uid, gid).
fn server_user() -> Result<Option<(u32, u32)>, String> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        out.status.success().then_some(())?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    match id(&["-u"]) {
        Some(0) => match (id(&["-u", "postgres"]), id(&["-g", "postgres"])) {
            (Some(uid), Some(gid)) => Ok(Some((uid, gid))),
            _ => Err("running as root and there is no `postgres` user to run PostgreSQL as".into()),
        },
        Some(_) => Ok(None),
        None => Err("`id -u` did not answer".into()),
    }
}

/// What every command of the cluster runs with: the programs, the user, the temp dir.
#[derive(Clone)]
struct Host {
    bin: PathBuf,
    user: Option<(u32, u32)>,
    root: PathBuf,
}

impl Host {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Runs `program` to completion (off the runtime's threads); panics with its output if it fails.
    async fn run(&self, program: &'static str, args: Vec<String>) {
        let mut cmd = self.command(program);
        cmd.args(&args);
        let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap();
        let out = out.unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Hands `path` to the servers' user (when that is not the current one).
    fn give(&self, path: &Path) {
        if let Some((uid, gid)) = self.user {
            chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `postgres` of the test's own.
pub struct PgServer {
    pub name: &'static str,
    pub port: u16,
    data: PathBuf,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    running: bool,
}

impl PgServer {
    /// Starts `postgres` on `data` with `settings` (on top of the test settings below) and waits
    /// until it accepts connections.
    async fn start(host: &Host, name: &'static str, data: PathBuf, settings: &[(&str, String)]) -> Self {
        let port = free_port();
        let mut cmd = host.command("postgres");
        cmd.arg("-D").arg(&data);
        let test_settings = [
            ("port", port.to_string()),
            ("listen_addresses", "127.0.0.1".into()),
            // TCP only: no socket in a directory the test does not own.
            ("unix_socket_directories", String::new()),
            ("dynamic_shared_memory_type", "mmap".into()),
            ("max_connections", "60".into()),
            ("shared_buffers", "16MB".into()),
            ("max_wal_senders", "4".into()),
            // The test crashes processes, never the machine: what a server wrote is in the OS's
            // cache and survives. Replication does not depend on it (the standby's ack is of what
            // it received and wrote); this only spares the shared disk.
            ("fsync", "off".into()),
        ];
        for (setting, value) in test_settings.iter().map(|(k, v)| (*k, v)).chain(settings.iter().map(|(k, v)| (*k, v)))
        {
            cmd.arg("-c").arg(format!("{setting}={value}"));
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().expect("stdout")), Box::new(child.stderr.take().expect("stderr"))];
        for stream in streams {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut server = Self { name, port, data, child, logs, running: true };
        let deadline = Instant::now() + Duration::from_secs(60);
        // "ready to accept connections", or "... read-only connections" for a standby.
        while !server.logs().iter().any(|l| l.contains("ready to accept")) {
            let exited = matches!(server.child.try_wait(), Ok(Some(_)));
            assert!(!exited && Instant::now() < deadline, "{name} did not start:\n{}", server.logs().join("\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub async fn connect(&self, database: &str) -> PgConnection {
        PgConnection::connect(&self.url(database)).await.unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the postmaster and all its processes at once, by PID; returns once none of them
    /// is left. Nothing is flushed, no one is told. Returns how many processes it killed.
    pub fn kill9(&mut self) -> usize {
        if !std::mem::replace(&mut self.running, false) {
            return 0;
        }
        let postmaster = self.child.id();
        let _ = Command::new("kill").args(["-STOP", &postmaster.to_string()]).status();
        let mut pids = children_of(postmaster);
        pids.push(postmaster);
        let _ = Command::new("kill").arg("-KILL").args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|pid| alive(*pid)) {
            assert!(Instant::now() < deadline, "{}'s processes outlived SIGKILL", self.name);
            std::thread::sleep(Duration::from_millis(5));
        }
        self.remove_shared_memory();
        pids.len()
    }

    /// The SysV segment a killed postmaster leaves: its id is the second number on line 7 of
    /// `postmaster.pid`. No process of the server is left to use it.
    fn remove_shared_memory(&self) {
        let Ok(pid_file) = std::fs::read_to_string(self.data.join("postmaster.pid")) else { return };
        let Some(id) = pid_file.lines().nth(6).and_then(|l| l.split_whitespace().nth(1)) else { return };
        let _ = Command::new("ipcrm").args(["-m", id]).stderr(Stdio::null()).status();
    }
}

/// `/proc/<pid>/stat` after the command (in parentheses): state, ppid, ...
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parent = parent.to_string();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(&pid.to_string()).is_some_and(|f| f.get(1) == Some(&parent)))
        .collect()
}

/// Still running: not gone, and not a zombie waiting for its (new) parent to reap it.
fn alive(pid: u32) -> bool {
    stat_fields(&pid.to_string()).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.kill9();
        if std::thread::panicking() {
            eprintln!("---- {} (PostgreSQL) logs ----\n{}", self.name, self.logs().join("\n"));
        }
    }
}

/// A primary and a standby streaming from it, in one temp dir.
pub struct PgCluster {
    pub primary: PgServer,
    pub standby: PgServer,
    /// The standby's replication connection goes through this proxy: `freeze` stalls replication
    /// (the standby falls behind), `cut` ends it.
    pub replication: TcpProxy,
    pub synchronous: bool,
    /// Dropped last: the servers are gone by then.
    _root: tempfile::TempDir,
}

impl PgCluster {
    /// A primary with `database`, and a standby made from it with `pg_basebackup`, streaming.
    /// `synchronous`: the primary's `synchronous_standby_names` names the standby, so a commit
    /// returns only once the standby has written it (`synchronous_commit=on`). `Err` (the caller
    /// skips, saying why) when this machine cannot run PostgreSQL servers of the test's own.
    pub async fn start(synchronous: bool, database: &str) -> Result<Self, String> {
        let bin = server_bin_dir()
            .ok_or("no PostgreSQL server programs (postgres, initdb, pg_basebackup); set PAYGATE_TEST_PG_BINDIR")?;
        let user = server_user()?;
        let root = tempfile::Builder::new().prefix("paygate-pg-").tempdir().expect("temp dir");
        let host = Host { bin, user, root: root.path().to_owned() };
        host.give(root.path());

        let primary_dir = root.path().join("primary");
        let initdb =
            ["-D", path(&primary_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"];
        host.run("initdb", initdb.map(String::from).to_vec()).await;
        let sync_names = if synchronous { format!("FIRST 1 ({STANDBY_NAME})") } else { String::new() };
        let primary_settings = [("synchronous_standby_names", sync_names), ("synchronous_commit", "on".to_owned())];
        let primary = PgServer::start(&host, "primary", primary_dir, &primary_settings).await;
        let mut admin = primary.connect("postgres").await;
        // There is no standby to wait for yet.
        admin.execute("SET synchronous_commit = local").await.expect("SET");
        admin.execute(format!("CREATE DATABASE {database}").as_str()).await.expect("create database");
        admin.close().await.ok();

        let replication = TcpProxy::start(primary.addr()).await;
        let standby_dir = root.path().join("standby");
        let port = primary.port.to_string();
        let backup = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", path(&standby_dir), "-X", "stream"];
        let mut backup: Vec<String> = backup.map(String::from).to_vec();
        backup.extend(["--checkpoint=fast", "--no-sync"].map(String::from));
        host.run("pg_basebackup", backup).await;
        let signal = standby_dir.join("standby.signal");
        std::fs::write(&signal, "").expect("standby.signal");
        host.give(&signal);
        let conninfo =
            format!("host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}", replication.addr.port());
        // No synchronous_standby_names here: once promoted it runs alone, and with the primary's
        // setting every commit would wait for a standby that does not exist (a failover manager
        // clears it, or names the next standby).
        let standby_settings = [("primary_conninfo", conninfo), ("hot_standby", "on".to_owned())];
        let standby = PgServer::start(&host, "standby", standby_dir, &standby_settings).await;

        let cluster = Self { primary, standby, replication, synchronous, _root: root };
        let want = if synchronous { "sync" } else { "async" };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = cluster.replication_state().await;
            if state.as_deref() == Some(&format!("streaming/{want}")) {
                return Ok(cluster);
            }
            assert!(Instant::now() < deadline, "the standby never reached streaming/{want}: {state:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `state/sync_state` of the standby in the primary's `pg_stat_replication`, e.g. `streaming/sync`.
    pub async fn replication_state(&self) -> Option<String> {
        let mut conn = self.primary.connect("postgres").await;
        let row = sqlx::query("SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = $1")
            .bind(STANDBY_NAME)
            .fetch_optional(&mut conn)
            .await
            .expect("pg_stat_replication");
        conn.close().await.ok();
        row.map(|r| r.get(0))
    }

    /// `pg_promote()` on the standby; returns once it has left recovery and takes writes.
    pub async fn promote_standby(&self) {
        let mut conn = self.standby.connect("postgres").await;
        let promoted: bool =
            sqlx::query_scalar("SELECT pg_promote(true, 30)").fetch_one(&mut conn).await.expect("pg_promote");
        assert!(promoted, "the standby did not finish its promotion within 30 s");
        conn.close().await.ok();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp dir path")
}
