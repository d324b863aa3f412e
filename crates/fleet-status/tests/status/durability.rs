//! The start-up durability check against private `redis-server`s (from the PATH) with each kind
//! of persistence, and the reading of `INFO persistence` where `CONFIG` is refused.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_core::config::RedisConfig;
use fleet_status::{Persistence, StatusError, StatusStore};

/// A `redis-server` on a free port with `args`, killed on drop.
struct Server {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/services.sh installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { port, child, dir }
    }

    async fn store(&self) -> StatusStore {
        let cfg = RedisConfig { url: format!("redis://127.0.0.1:{}/0", self.port), ..RedisConfig::default() };
        StatusStore::connect(&cfg).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.dir.path();
    }
}

#[tokio::test]
async fn a_redis_that_keeps_nothing_is_refused_unless_allowed() {
    let server = Server::start(&["--appendonly", "no", "--save", ""]);
    let store = server.store().await;
    let err = store.check_durability(false).await.unwrap_err();
    assert!(matches!(err, StatusError::Volatile { .. }), "{err:?}");
    let message = err.to_string();
    for part in
        ["keeps nothing across a restart", "appendonly no, save \"\"", "appendonly yes", "redis.allow_volatile = true"]
    {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert!(matches!(store.check_durability(true).await.unwrap(), Persistence::Volatile { .. }));
}

#[tokio::test]
async fn an_append_only_file_passes_and_snapshots_alone_pass_with_their_rules() {
    let aof = Server::start(&["--appendonly", "yes", "--save", ""]);
    assert_eq!(aof.store().await.check_durability(false).await.unwrap(), Persistence::Aof);
    let rdb = Server::start(&["--appendonly", "no", "--save", "900 1"]);
    let found = rdb.store().await.check_durability(false).await.unwrap();
    assert_eq!(found, Persistence::Snapshots { evidence: "appendonly no, save \"900 1\"".into() });
}

#[tokio::test]
async fn where_config_is_refused_info_persistence_decides() {
    // As on managed Redis: CONFIG renamed away.
    let server = Server::start(&["--appendonly", "yes", "--save", "", "--rename-command", "CONFIG", ""]);
    assert_eq!(server.store().await.persistence().await.unwrap(), Persistence::Aof);
    let volatile = Server::start(&["--appendonly", "no", "--save", "", "--rename-command", "CONFIG", ""]);
    let found = volatile.store().await.persistence().await.unwrap();
    assert!(matches!(&found, Persistence::Volatile { evidence } if evidence.contains("INFO persistence")), "{found:?}");
    let snapshots = "rdb_saves:3\r\nrdb_last_bgsave_time_sec:0\r\naof_enabled:0\r\n";
    assert!(matches!(Persistence::from_info(snapshots), Persistence::Snapshots { .. }));
}
