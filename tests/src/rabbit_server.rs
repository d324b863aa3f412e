//! A private RabbitMQ node that a test may stop and start again, next to (never instead of) the
//! machine's shared broker: its own node name, AMQP and distribution ports, data and log
//! directories, configuration and Erlang cookie, all under one temporary directory.
//!
//! Quorum queues keep their messages on disk in that directory, so a restart shows whether every
//! accepted job survives a broker restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to boot on a loaded 2-core machine.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// A `rabbitmq-server` process on free ports with its own data.
pub struct PrivateRabbit {
    node: String,
    amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The RabbitMQ scripts: Debian's real ones (the `/usr/sbin` wrappers switch to the `rabbitmq`
/// user and drop the environment that makes this node private), else whatever is on the PATH.
fn script(name: &str) -> PathBuf {
    let debian = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() { debian } else { PathBuf::from(name) }
}

/// A port nobody listens on now, below 35535 so that the CLI's own distribution ports
/// (the node's distribution port + 10000 …) stay valid.
fn free_port(taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let port = 20_000 + (rand_u16() % 15_000);
        if taken.contains(&port) || taken.iter().any(|t| port.abs_diff(*t) < 30) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port for a private RabbitMQ node");
}

fn rand_u16() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

impl PrivateRabbit {
    /// Starts a node and waits until it has fully booted.
    pub fn start() -> PrivateRabbit {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("fleet-rabbit-{tag}"));
        std::fs::create_dir_all(&dir).expect("rabbitmq directory");
        let amqp_port = free_port(&[5672, 25672]);
        let dist_port = free_port(&[5672, 25672, amqp_port]);
        let node = format!("fleetchaos{}@localhost", &tag[tag.len() - 10..]);
        let conf = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp_port}\nloopback_users = none\n\
             # the suite's own consumers hold messages for at most a batch\nconsumer_timeout = 600000\n"
        );
        std::fs::write(dir.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        let mut rabbit = PrivateRabbit { node, amqp_port, dist_port, dir, child: None };
        rabbit.spawn();
        rabbit
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `host:port` of the AMQP listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.amqp_port)
    }

    /// The Erlang VM's process id (the node writes it to its pid file once booted).
    pub fn beam_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid")).ok()?.trim().parse().ok()
    }

    /// Stops the node (SIGTERM: a clean shutdown) and starts it again on the same ports and data
    /// after `down` without a broker.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.spawn();
    }

    /// The node's environment: everything that would otherwise point at the shared broker.
    fn env(&self, command: &mut Command) {
        let d = &self.dir;
        command
            .env("HOME", d) // the Erlang cookie lives here, shared by the node and rabbitmqctl
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_CRASH_DUMP_SECONDS", "0");
    }

    fn spawn(&mut self) {
        let mut command = Command::new(script("rabbitmq-server"));
        self.env(&mut command);
        let log = std::fs::File::create(self.dir.join("server.out")).expect("server.out");
        let child = command
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server (scripts/services.sh installs the rabbitmq-server package)");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let mut ctl = Command::new(script("rabbitmqctl"));
            self.env(&mut ctl);
            let ready = ctl
                .args(["-n", &self.node, "await_startup", "--timeout", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(exit)) = child.try_wait()
            {
                panic!("private RabbitMQ exited ({exit}) during boot; see {}", self.dir.join("server.out").display());
            }
            assert!(started.elapsed() < BOOT_LIMIT, "private RabbitMQ did not boot; see {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // The script traps SIGTERM and stops the node cleanly, then exits.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let started = Instant::now();
        while !matches!(child.try_wait(), Ok(Some(_))) {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
