//! `fleet worker` and `fleet dispatcher` as separate processes, so a test can SIGKILL, SIGSTOP and
//! SIGCONT them like an operator or a kernel would, and read their memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One child process of the `fleet` binary; killed (SIGKILL) when dropped.
pub struct FleetProcess {
    /// What it is, for messages: `dispatcher`, `worker w3`.
    pub name: String,
    child: Child,
    /// Its stderr (the logs), kept for post-mortems.
    pub log: PathBuf,
}

impl FleetProcess {
    /// Starts `fleet --config <config> <args…>` with its output in `<log_dir>/<log_name>.log`.
    pub fn spawn(config: &Path, args: &[&str], log_dir: &Path, log_name: &str) -> FleetProcess {
        let bin = crate::fleet_binary();
        assert!(bin.exists(), "{} missing: build the whole workspace (cargo test --workspace --no-run)", bin.display());
        let log = log_dir.join(format!("{log_name}.log"));
        let file = std::fs::File::create(&log).expect("process log file");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("FLEET_LOG", std::env::var("FLEET_CHAOS_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("start the fleet binary");
        FleetProcess { name: log_name.to_owned(), child, log }
    }

    /// A worker serving the tiny model under the given id.
    pub fn worker(config: &Path, id: &str, log_dir: &Path) -> FleetProcess {
        FleetProcess::spawn(config, &["worker", "--model", "tiny", "--id", id], log_dir, id)
    }

    /// A dispatcher on the configuration's `http.listen`.
    pub fn dispatcher(config: &Path, log_dir: &Path, generation: usize) -> FleetProcess {
        FleetProcess::spawn(config, &["dispatcher"], log_dir, &format!("dispatcher-{generation}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`, `TERM`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill").args([&format!("-{name}"), &self.pid().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()) || !self.is_running(), "kill -{name} {} failed", self.name);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `limit` for the exit (SIGKILL after that); returns whether it
    /// exited by itself with status 0.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        self.signal("TERM");
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    self.kill();
                    return false;
                }
            }
        }
    }

    /// Whether the process has not exited.
    pub fn is_running(&self) -> bool {
        // try_wait needs &mut; /proc tells the same without reaping.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map(|stat| !stat.split(' ').nth(2).is_some_and(|state| state == "Z" || state == "X"))
            .unwrap_or(false)
    }

    /// Resident memory in KiB (`VmRSS` of `/proc/<pid>/status`), if it can be read.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }
}

/// Resident memory of any process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        // A stopped process does not die of SIGTERM; SIGKILL always works.
        self.kill();
    }
}
