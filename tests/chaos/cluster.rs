//! The pipeline as separate OS processes of the `tidings` binary: one
//! gateway and a process per stage, all reading one configuration file.
//! Every child's pid is kept; dropping the [`Cluster`] kills them all (also
//! when a test panics), and each child is told by the kernel to die with the
//! test process (`PR_SET_PDEATHSIG`), so none outlives a killed test run.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One role: a `tidings` command line, and its current process.
pub struct Proc {
    pub role: String,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    /// Highest VmHWM (peak resident set) seen over every incarnation, in KiB.
    pub peak_rss_kb: u64,
}

/// An exit nobody asked for: the role, its exit status and its last log
/// lines.
#[derive(Debug, Clone)]
pub struct Exit {
    pub role: String,
    pub status: String,
    pub last_lines: String,
}

pub struct Cluster {
    binary: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    pub procs: Vec<Proc>,
    /// Unexpected exits since the last [`Cluster::take_exits`].
    exits: Vec<Exit>,
}

impl Cluster {
    pub fn new(binary: &Path, config: &Path, dir: &Path) -> Self {
        Self {
            binary: binary.to_owned(),
            config: config.to_owned(),
            dir: dir.to_owned(),
            procs: Vec::new(),
            exits: Vec::new(),
        }
    }

    /// A `tidings` command with this cluster's configuration; each process
    /// serves its metrics on a port of its own (two on one host would
    /// otherwise collide on the default).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.dir)
            .env("TIDINGS_TELEMETRY__METRICS_ADDR", "127.0.0.1:0")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec here.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Starts a role; returns its index.
    pub fn spawn(&mut self, role: &str, args: &[&str]) -> usize {
        let log = self.dir.join(format!("{role}.log"));
        self.procs.push(Proc {
            role: role.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log,
            peak_rss_kb: 0,
        });
        let i = self.procs.len() - 1;
        self.start(i);
        i
    }

    fn start(&mut self, i: usize) {
        let p = &self.procs[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&p.log)
            .expect("process log file");
        let args: Vec<&str> = p.args.iter().map(String::as_str).collect();
        let child = self
            .command(&args)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting `tidings {}`: {e}", p.args.join(" ")));
        self.procs[i].child = Some(child);
    }

    /// The pid of a role's current process, if it runs.
    pub fn pid(&self, role: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.role == role)
            .and_then(|p| p.child.as_ref())
            .map(Child::id)
    }

    pub fn index(&self, role: &str) -> usize {
        self.procs
            .iter()
            .position(|p| p.role == role)
            .unwrap_or_else(|| panic!("no role {role}"))
    }

    /// `kill -9`, after noting its peak RSS (gone with the process).
    pub fn kill9(&mut self, i: usize) {
        self.sample_rss();
        if let Some(mut child) = self.procs[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.start(i);
    }

    /// Notes every process's VmHWM.
    pub fn sample_rss(&mut self) {
        for p in &mut self.procs {
            if let Some(kb) = p.child.as_ref().and_then(|c| vm_hwm_kb(c.id())) {
                p.peak_rss_kb = p.peak_rss_kb.max(kb);
            }
        }
    }

    /// Finds processes that exited without being killed here, records
    /// them, and starts them again so the run goes on.
    pub fn check(&mut self) {
        self.sample_rss();
        for i in 0..self.procs.len() {
            let status = match self.procs[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => status,
                _ => continue,
            };
            self.procs[i].child = None;
            let p = &self.procs[i];
            self.exits.push(Exit {
                role: p.role.clone(),
                status: status.to_string(),
                last_lines: tail(&p.log, 3),
            });
            self.start(i);
        }
    }

    pub fn take_exits(&mut self) -> Vec<Exit> {
        std::mem::take(&mut self.exits)
    }

    /// Peak RSS by role, in MiB, and clears it for the next experiment
    /// (running processes start again from their current VmHWM, which the
    /// kernel never lowers).
    pub fn take_peak_rss(&mut self) -> BTreeMap<String, u64> {
        self.sample_rss();
        let mut peaks = BTreeMap::new();
        // Replicas killed for good earlier have nothing to report.
        for p in self.procs.iter_mut().filter(|p| p.peak_rss_kb > 0) {
            let mib = p.peak_rss_kb.div_ceil(1024);
            let e = peaks.entry(p.role.clone()).or_insert(0);
            *e = (*e).max(mib);
            p.peak_rss_kb = 0;
        }
        peaks
    }

    /// Kills every process (SIGKILL: the suite measures crashes anyway, and
    /// a clean stop could wait on a fault still in place).
    pub fn kill_all(&mut self) {
        for i in 0..self.procs.len() {
            self.kill9(i);
        }
    }

    /// Runs `tidings <args>` to completion within `limit`; returns stdout.
    pub fn run(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting tidings {args:?}: {e}"))?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("tidings {args:?} did not finish in {limit:?}"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(format!("waiting for tidings {args:?}: {e}")),
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("tidings {args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "tidings {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// VmHWM of a live process, in KiB.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The last `n` lines of a log file (reads at most its last 16 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
