//! The dispatcher and workers `fleet up` runs: child processes of this binary, each in its own
//! process group (a terminal's Ctrl-C reaches only `fleet up`, which stops them in order), with
//! their logs in files.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// One `fleet …` child process; killed if dropped while running.
#[derive(Debug)]
pub struct Child {
    pub name: String,
    pub log: PathBuf,
    process: tokio::process::Child,
}

impl Child {
    /// Starts `fleet --config <config> <args…>` with its output in `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, config: &Path, args: &[String], log_dir: &Path) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("cannot find the running fleet binary")?;
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let process = tokio::process::Command::new(exe)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("FLEET_LOG", std::env::var("FLEET_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        Ok(Child { name: name.to_owned(), log, process })
    }

    /// Its exit status once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.try_wait().ok().flatten()
    }

    /// Asks it to stop (SIGTERM: a worker drains, a dispatcher finishes its requests).
    pub fn terminate(&self) {
        if let Some(pid) = self.process.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL. Returns whether it exited by itself.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        self.terminate();
        match tokio::time::timeout(grace, self.process.wait()).await {
            Ok(_) => true,
            Err(_) => {
                let _ = self.process.kill().await;
                false
            }
        }
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
