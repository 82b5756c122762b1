//! Building a cluster and tearing it down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use crate::bins::Binaries;
use crate::conf::{node_conf, NodeSettings, NODE_CONF};
use crate::ports::free_port;
use crate::process::{self, Launch, StartFailure};
use crate::runas::RunAs;
use crate::{template, ClusterConfig, ClusterError, Node, SUPERUSER, SUPERUSER_PASSWORD};

/// Generous: CI machines run many clusters at once on few cores.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Fresh ports tried when a new node's port turns out to be taken.
const PORT_ATTEMPTS: usize = 8;

/// A running primary and its replicas. Dropping it stops every server and
/// removes the directories (unless `keep_dir`).
pub struct Cluster {
    pub(crate) nodes: Vec<Node>,
    /// The postmaster of each node while it runs, index-aligned with `nodes`.
    pub(crate) procs: Vec<Mutex<Option<Child>>>,
    pub(crate) run: RunAs,
    pub(crate) bins: Binaries,
    pub(crate) cfg: ClusterConfig,
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    startup: Duration,
}

impl Cluster {
    /// Starts a primary and `cfg.replicas` streaming replicas and returns once
    /// every replica streams from the primary.
    pub fn start(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        let began = Instant::now();
        let bins = Binaries::get()?;
        let run = RunAs::detect()?;
        let template = template::ensure(&run, &bins)?;
        let root = tempfile::Builder::new()
            .prefix("pgcluster-")
            .tempdir_in(std::env::temp_dir())
            .map_err(|e| ClusterError::io("create cluster dir", e))?;
        let root_path = root.path().to_path_buf();
        run.own(&root_path)?;
        // From here on, a failure drops `cluster`, which stops what was started.
        let mut cluster = Cluster {
            nodes: Vec::new(),
            procs: Vec::new(),
            run,
            bins,
            cfg,
            root: Some(root),
            root_path,
            startup: Duration::ZERO,
        };

        let dir = cluster.root_path.join(node_name(0));
        run.create_dir(&dir)?;
        run.copy_dir(&template, &dir.join("data"))?;
        let (node, child) = cluster.launch_new(0, &dir, None)?;
        cluster.push(node, child);

        let primary_port = cluster.nodes.first().map(|n| n.port).unwrap_or_default();
        let results: Vec<Result<(Node, Child), ClusterError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..cluster.cfg.replicas)
                .map(|r| {
                    let c = &cluster;
                    s.spawn(move || c.make_replica(r, primary_port))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ClusterError::Topology(
                            "replica setup thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut first_err = None;
        for result in results {
            match result {
                Ok((node, child)) => cluster.push(node, child),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let names: Vec<String> = cluster
            .nodes
            .iter()
            .skip(1)
            .map(|n| n.name.clone())
            .collect();
        cluster.wait_attached(&names, START_TIMEOUT)?;
        cluster.startup = began.elapsed();
        tracing::debug!(elapsed = ?cluster.startup, dir = %cluster.root_path.display(), "cluster started");
        Ok(cluster)
    }

    /// Wall time `start` took, for reports and benchmarks.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The temporary directory holding all nodes.
    pub fn root_dir(&self) -> &Path {
        &self.root_path
    }

    fn push(&mut self, node: Node, child: Child) {
        self.nodes.push(node);
        self.procs.push(Mutex::new(Some(child)));
    }

    /// Clones the primary with pg_basebackup over TCP (exercising scram auth the
    /// way a real standby does) and starts the copy as a standby.
    fn make_replica(&self, r: usize, primary_port: u16) -> Result<(Node, Child), ClusterError> {
        let dir = self.root_path.join(node_name(r + 1));
        self.run.create_dir(&dir)?;
        let data = dir.join("data");
        let mut cmd = self.run.command(&self.bins.pg_basebackup, &dir);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            SUPERUSER,
        ])
        .arg("-D")
        .arg(&data)
        .args(["-X", "stream", "-c", "fast", "-w"])
        .env("PGPASSWORD", SUPERUSER_PASSWORD);
        run_checked(cmd, "pg_basebackup")?;
        self.run.write_file(&data.join("standby.signal"), "")?;
        self.launch_new(r + 1, &dir, Some(primary_port))
    }

    /// The configured apply delay of node `i` (never the initial primary's), so a
    /// replica rebuilt later lags like the one it replaces.
    pub(crate) fn apply_delay_of(&self, i: usize) -> Option<Duration> {
        let r = i.checked_sub(1)?;
        self.cfg
            .apply_delay
            .iter()
            .rev()
            .find(|(idx, _)| *idx == r)
            .map(|(_, d)| *d)
    }

    /// Node `i`'s own `node.conf`, with `upstream` as the port it streams from.
    pub(crate) fn node_conf_for(&self, i: usize, node: &Node, upstream: Option<u16>) -> String {
        node_conf(&NodeSettings {
            name: &node.name,
            port: node.port,
            socket_dir: &node.socket_dir,
            upstream: upstream.map(|p| (p, SUPERUSER_PASSWORD)),
            apply_delay: self.apply_delay_of(i),
            synchronous_standby_names: self.cfg.synchronous_standby_names.as_deref(),
            extra: &self.cfg.extra_conf,
        })
    }

    /// Starts a node for the first time, moving to a fresh port if its port is
    /// taken by someone else between our probe and the server's bind.
    fn launch_new(
        &self,
        i: usize,
        dir: &Path,
        upstream: Option<u16>,
    ) -> Result<(Node, Child), ClusterError> {
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let node = Node {
                name: node_name(i),
                host: "127.0.0.1".into(),
                port: free_port()?,
                data_dir: dir.join("data"),
                socket_dir: dir.to_path_buf(),
                log_file: dir.join("postgres.log"),
            };
            self.run.write_file(
                &node.data_dir.join(NODE_CONF),
                &self.node_conf_for(i, &node, upstream),
            )?;
            match process::start(&self.run, &self.bins, &launch(&node), START_TIMEOUT) {
                Ok(child) => return Ok((node, child)),
                Err(StartFailure::AddressInUse(e)) => last_err = Some(e),
                Err(other) => return Err(other.into_error()),
            }
        }
        Err(last_err.unwrap_or_else(|| ClusterError::Topology("no start attempt".into())))
    }
}

/// `pg0` is the initial primary; pgrelay's demo config names its nodes the same
/// way, which is what lets `synchronous_standby_names` refer to them.
fn node_name(i: usize) -> String {
    format!("pg{i}")
}

pub(crate) fn launch(node: &Node) -> Launch<'_> {
    Launch {
        name: &node.name,
        data_dir: &node.data_dir,
        log: &node.log_file,
        cwd: &node.socket_dir,
    }
}

pub(crate) fn run_checked(mut cmd: Command, what: &str) -> Result<(), ClusterError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClusterError::io(format!("spawn {what}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::Command {
        command: format!("{cmd:?}"),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

impl Drop for Cluster {
    /// Immediate shutdown of every server (all signalled first, then reaped, so
    /// teardown costs one shutdown, not one per node), then directory removal.
    /// Errors are ignored: Drop may run while a test panics.
    fn drop(&mut self) {
        let mut children: Vec<Child> = self
            .procs
            .iter()
            .filter_map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take())
            .collect();
        for child in &children {
            let _ = kill(process::pid_of(child), Signal::SIGQUIT);
        }
        for child in &mut children {
            let _ = process::shutdown(child, Signal::SIGQUIT, Duration::from_secs(15));
        }
        if let Some(root) = self.root.take() {
            if self.cfg.keep_dir {
                let kept = root.keep();
                eprintln!("cluster: kept {}", kept.display());
            }
            // Otherwise dropping the TempDir removes the tree.
        }
    }
}
