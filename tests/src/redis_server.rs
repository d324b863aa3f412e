//! A private `redis-server` (from the PATH) that a test may stop and start again, with the
//! append-only file on as the README recommends for production, so records survive a restart;
//! and a private Sentinel group ([`SentinelRedis`]): a primary, a replica and three sentinels.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Redis process on a free port with its own data directory.
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Neither an append-only file nor snapshots: a restart keeps nothing.
    volatile: bool,
}

impl PrivateRedis {
    /// Starts it and waits until it accepts connections.
    pub fn start() -> PrivateRedis {
        Self::start_keeping(false)
    }

    /// [`Self::start`] without persistence (the Debian package's default): a restart keeps nothing.
    pub fn start_volatile() -> PrivateRedis {
        Self::start_keeping(true)
    }

    fn start_keeping(volatile: bool) -> PrivateRedis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("fleet-redis-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("redis data directory");
        let mut redis = PrivateRedis { port, dir, child: None, volatile };
        redis.spawn();
        redis
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server with SIGTERM (Redis flushes its append-only file) and starts it again on
    /// the same port and data, after `down` without a server.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.spawn();
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(if self.volatile {
                ["--appendonly", "no", "--appendfsync", "no"]
            } else {
                ["--appendonly", "yes", "--appendfsync", "always"]
            })
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/services.sh installs it)");
        self.child = Some(child);
        wait_port(self.port, "private redis-server");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn wait_port(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what} on port {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The name the sentinels of [`SentinelRedis`] know the primary by (`redis.sentinel_master`'s default).
pub const SENTINEL_MASTER: &str = "mymaster";

/// One primary, one replica (append-only files on, asynchronous replication) and three sentinels
/// (quorum 2, a primary counts as down after 1 s) on loopback, from `redis-server` alone
/// (`redis-server <conf> --sentinel` where the redis-sentinel package is missing).
pub struct SentinelRedis {
    dir: PathBuf,
    /// The two data nodes; either may be the primary.
    nodes: [Node; 2],
    sentinels: Vec<(u16, Child)>,
}

struct Node {
    port: u16,
    /// Started as a replica of this port.
    replica_of: Option<u16>,
    child: Option<Child>,
}

impl SentinelRedis {
    /// Starts the group and waits until the replica is in sync and every sentinel knows the
    /// replica and the two other sentinels.
    pub fn start() -> SentinelRedis {
        let dir = std::env::temp_dir().join(format!("fleet-sentinel-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("sentinel group directory");
        let primary = free_port();
        let nodes = [
            Node { port: primary, replica_of: None, child: None },
            Node { port: free_port(), replica_of: Some(primary), child: None },
        ];
        let mut group = SentinelRedis { dir, nodes, sentinels: Vec::new() };
        group.spawn_node(0);
        group.spawn_node(1);
        for i in 0..3 {
            let port = free_port();
            let conf = group.dir.join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                dir = group.dir.display()
            );
            std::fs::write(&conf, text).expect("sentinel configuration");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (scripts/services.sh installs it)");
            group.sentinels.push((port, child));
            wait_port(port, "sentinel");
        }
        group.until_settled(Duration::from_secs(30));
        group
    }

    /// `redis://127.0.0.1:<port>/0` of the first primary: what `redis.url` gives besides the
    /// sentinels (the database; its address is not used once the sentinels answer).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.nodes[0].port)
    }

    /// `redis://127.0.0.1:<port>` of each sentinel, for `redis.sentinels`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|(port, _)| format!("redis://127.0.0.1:{port}")).collect()
    }

    /// The port of the primary the sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.ask_sentinel(0, &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER])?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// SIGKILLs the primary (no shutdown, no last AOF flush), waits until the sentinels have
    /// promoted the replica, then starts the killed node again, which the sentinels turn into a
    /// replica of the new primary; returns once it is in sync, so the next failover has a replica
    /// to promote. Returns how long the fleet had no primary (kill → promotion seen).
    pub fn fail_over(&mut self, limit: Duration) -> Duration {
        let old = self.primary_port().expect("the sentinels name a primary");
        let i = self.nodes.iter().position(|n| n.port == old).expect("the primary is one of the group's nodes");
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let killed = Instant::now();
        while self.primary_port() == Some(old) {
            assert!(killed.elapsed() < limit, "the sentinels did not fail over within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let without_primary = killed.elapsed();
        // Back as it was started; the sentinels make it a replica of the new primary.
        self.spawn_node(i);
        self.until_settled(limit);
        without_primary
    }

    fn spawn_node(&mut self, i: usize) {
        let node = &self.nodes[i];
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &node.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
            .arg(self.dir.join(format!("node-{i}")));
        if let Some(primary) = node.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        std::fs::create_dir_all(self.dir.join(format!("node-{i}"))).expect("node directory");
        let child = cmd.stdout(Stdio::null()).spawn().expect("redis-server on PATH (scripts/services.sh installs it)");
        let port = node.port;
        self.nodes[i].child = Some(child);
        wait_port(port, "redis node");
    }

    /// Waits until the primary the sentinels name has a replica in sync and every sentinel sees
    /// one replica and two other sentinels.
    fn until_settled(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let synced = self.primary_port().is_some_and(|primary| {
                let replica = self.nodes.iter().find(|n| n.port != primary && n.child.is_some());
                replica.and_then(|r| cli(r.port, &["INFO", "replication"])).is_some_and(|info| {
                    info.contains("master_link_status:up") && info.contains(&format!("master_port:{primary}"))
                })
            });
            let known = (0..self.sentinels.len()).all(|i| {
                self.ask_sentinel(i, &["SENTINEL", "master", SENTINEL_MASTER]).is_some_and(|out| {
                    let field = |name: &str| {
                        let lines: Vec<&str> = out.lines().map(str::trim).collect();
                        lines.iter().position(|l| *l == name).and_then(|p| lines.get(p + 1)).map(|v| v.to_string())
                    };
                    field("num-slaves").as_deref() == Some("1") && field("num-other-sentinels").as_deref() == Some("2")
                })
            });
            if synced && known {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "the Sentinel group did not settle within {limit:?}: {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ask_sentinel(&self, i: usize, args: &[&str]) -> Option<String> {
        cli(self.sentinels[i].0, args)
    }
}

/// `redis-cli -p <port> <args>`'s output, `None` when it fails.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()).filter(|s| !s.starts_with("ERR"))
}

impl Drop for SentinelRedis {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
