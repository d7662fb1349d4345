//! Private server instances for tests that need fault injection: a JetStream nats-server and
//! a PostgreSQL cluster, each on an ephemeral port in a temp dir, killed when dropped. The
//! shared services on the machine's standard ports are never touched.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn binary(name: &str, candidates: &[&str]) -> PathBuf {
    for c in candidates {
        let p = PathBuf::from(c);
        if p.exists() {
            return p;
        }
    }
    which(name).unwrap_or_else(|| panic!("{name} is not installed (.ci/run installs it)"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

pub struct Nats {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Nats {
        let mut n = Nats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        n.up();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and store directory.
    pub fn up(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(binary(
            "nats-server",
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        ))
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "nats-server did not listen"
        );
    }

    /// Stops it hard (SIGKILL): in-flight publishes get no ack.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

pub struct Postgres {
    pub port: u16,
    dir: TempDir,
    running: bool,
}

impl Postgres {
    /// initdb + pg_ctl start in a temp dir (as the `postgres` user when running as root: the
    /// server refuses to run as root).
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let as_root = unsafe_geteuid_is_root();
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let initdb = binary(
            "initdb",
            &["/usr/local/bin/initdb", "/usr/lib/postgresql/15/bin/initdb"],
        );
        let out = pg_command(as_root, &initdb)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            dir,
            running: false,
        };
        pg.up();
        pg
    }

    /// Starts the server (again, with its data) on its port.
    pub fn up(&mut self) {
        assert!(!self.running);
        let as_root = unsafe_geteuid_is_root();
        let pg_ctl = binary(
            "pg_ctl",
            &["/usr/local/bin/pg_ctl", "/usr/lib/postgresql/15/bin/pg_ctl"],
        );
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let out = pg_command(as_root, &pg_ctl)
            .args(["-D", self.dir.path().join("data").to_str().unwrap(), "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-o", &opts, "-w", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = true;
    }

    /// Stops the server (fast shutdown: clients are disconnected), keeping its data.
    pub fn down(&mut self) {
        assert!(self.running);
        let pg_ctl = binary(
            "pg_ctl",
            &["/usr/local/bin/pg_ctl", "/usr/lib/postgresql/15/bin/pg_ctl"],
        );
        let out = pg_command(unsafe_geteuid_is_root(), &pg_ctl)
            .args([
                "-D",
                self.dir.path().join("data").to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

fn pg_command(as_root: bool, bin: &std::path::Path) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn unsafe_geteuid_is_root() -> bool {
    // `id -u` rather than libc: the test crate stays free of unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let pg_ctl = binary(
                "pg_ctl",
                &["/usr/local/bin/pg_ctl", "/usr/lib/postgresql/15/bin/pg_ctl"],
            );
            let _ = pg_command(unsafe_geteuid_is_root(), &pg_ctl)
                .args([
                    "-D",
                    self.dir.path().join("data").to_str().unwrap(),
                    "-m",
                    "immediate",
                    "stop",
                ])
                .output();
            self.running = false;
        }
    }
}

/// A private redis-server: nothing on disk, killed when dropped.
pub struct Redis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.up();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts (again, empty) on the same port.
    pub fn up(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(binary(
            "redis-server",
            &["/usr/bin/redis-server", "/usr/local/bin/redis-server"],
        ))
        .args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "redis-server did not listen"
        );
    }

    /// SIGKILL: everything it held is gone.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGSTOP: the port stays open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.down();
    }
}

/// A private Redis Cluster: three masters (no replicas), every slot assigned, killed when
/// dropped.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    _dir: TempDir,
    children: Vec<Child>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let server = binary(
            "redis-server",
            &["/usr/bin/redis-server", "/usr/local/bin/redis-server"],
        );
        let cli = binary(
            "redis-cli",
            &["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"],
        );
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for p in &ports {
            let node_dir = dir.path().join(p.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            children.push(
                Command::new(&server)
                    .args([
                        "--port",
                        &p.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                    ])
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server starts"),
            );
        }
        let cluster = RedisCluster {
            ports: ports.clone(),
            _dir: dir,
            children,
        };
        for p in &ports {
            assert!(
                wait_for_port(*p, Duration::from_secs(10)),
                "redis-server did not listen"
            );
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for p in &ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let start = Instant::now();
        loop {
            let ok = ports.iter().all(|p| {
                Command::new(&cli)
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if ok {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the cluster did not form"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The seed nodes, comma-separated (`quota.redis_url` with `redis_cluster = true`).
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
