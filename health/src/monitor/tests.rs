use super::*;
use crate::probe::{ProbeError, ProbeOutcome, Sample};
use router::{Class, Lsn, NodeState, Role};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

fn creds() -> ControlCreds {
    ControlCreds {
        user: "postgres".into(),
        password: String::new(),
        database: "postgres".into(),
    }
}

fn node(i: usize, port: u16) -> NodeSpec {
    NodeSpec {
        id: NodeId(i),
        name: format!("pg{i}"),
        host: "127.0.0.1".into(),
        port,
    }
}

/// A port nothing listens on: bind an ephemeral one, then release it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn settings(interval: Duration, timeout: Duration) -> Settings {
    Settings {
        interval,
        timeout,
        ..Settings::default()
    }
}

fn no_op() -> OnDown {
    Arc::new(|_| {})
}

#[test]
fn backoff_doubles_after_the_second_failure_up_to_a_cap() {
    let i = Duration::from_millis(250);
    let got: Vec<u64> = (0..8)
        .map(|f| next_beat_in(i, f).as_millis() as u64)
        .collect();
    assert_eq!(got, [250, 250, 500, 1000, 2000, 2000, 2000, 2000]);
    // An interval above the cap is never shortened.
    assert_eq!(
        next_beat_in(Duration::from_secs(5), 9),
        Duration::from_secs(5)
    );
    assert_eq!(next_beat_in(i, u32::MAX), MAX_BACKOFF);
}

#[tokio::test]
async fn closed_port_is_down_without_waiting_for_the_timeout() {
    let nodes = [node(0, closed_port())];
    let started = std::time::Instant::now();
    let t = discover(&nodes, &creds(), Duration::from_secs(30)).await;
    assert_eq!(t.version, 1);
    let n = &t.nodes[0];
    assert!(!n.up && n.role == Role::Unknown, "{n:?}");
    assert_eq!(n.state, NodeState::Down);
    // Refused at once: far below the 30s bound, with ample slack for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn silent_server_is_down_after_the_timeout() {
    // Accepts TCP (kernel backlog) but never answers the startup message.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let nodes = [node(0, port), node(1, closed_port())];
    let t = discover(&nodes, &creds(), Duration::from_millis(200)).await;
    assert!(
        t.nodes.iter().all(|n| !n.up && n.role == Role::Unknown),
        "{t:?}"
    );
    assert_eq!(t.nodes.len(), 2);
    drop(listener);
}

#[tokio::test]
async fn monitor_stops_on_shutdown_and_when_its_sender_drops() {
    let topology = crate::shared(Topology::default());
    let (tx, rx) = watch::channel(false);
    let nodes = vec![node(0, closed_port()), node(1, closed_port())];
    let (handle, _) = HealthMonitor::spawn(
        nodes,
        creds(),
        settings(Duration::from_millis(20), Duration::from_millis(500)),
        topology.clone(),
        no_op(),
        None,
        rx,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Both nodes known, neither ever up; published once, not again per failed beat.
    let t = topology.load_full();
    assert_eq!(t.version, 1);
    assert!(t.nodes.len() == 2 && t.nodes.iter().all(|n| !n.up), "{t:?}");
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("monitor did not stop")
        .unwrap();

    let (tx, rx) = watch::channel(false);
    let (handle, _) = HealthMonitor::spawn(
        vec![node(0, closed_port())],
        creds(),
        settings(Duration::from_secs(3600), Duration::from_millis(100)),
        crate::shared(Topology::default()),
        no_op(),
        None,
        rx,
    );
    drop(tx);
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("monitor did not stop")
        .unwrap();
}

/// What a fake node answers.
#[derive(Debug, Clone)]
enum Answer {
    Primary,
    Replica { frozen_at: Option<u64> },
    Refuse,
    Hang,
}

/// Scripted nodes on tokio's clock: the primary's LSN is the number of milliseconds since
/// the script started, so WAL is written continuously; a replica replays everything unless
/// frozen at a position.
struct Script {
    start: Instant,
    answers: Mutex<Vec<Answer>>,
    beats: AtomicUsize,
}

impl Script {
    fn new(answers: Vec<Answer>) -> Arc<Script> {
        Arc::new(Script {
            start: Instant::now(),
            answers: Mutex::new(answers),
            beats: AtomicUsize::new(0),
        })
    }

    fn set(&self, node: usize, a: Answer) {
        self.answers.lock().unwrap()[node] = a;
    }

    fn lsn_now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }
}

struct FakePulse {
    node: usize,
    script: Arc<Script>,
    timeout: Duration,
}

impl Pulse for FakePulse {
    async fn beat(&mut self) -> ProbeOutcome {
        self.script.beats.fetch_add(1, Ordering::Relaxed);
        let answer = self.script.answers.lock().unwrap()[self.node].clone();
        // A round trip takes a millisecond.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let lsn = self.script.lsn_now();
        match answer {
            Answer::Primary => Ok(Sample {
                current: Some(Lsn(lsn)),
                ..Sample::of_role(Role::Primary)
            }),
            Answer::Replica { frozen_at } => {
                let replay = Lsn(frozen_at.unwrap_or(lsn));
                Ok(Sample {
                    receive: Some(Lsn(lsn)),
                    replay: Some(replay),
                    ..Sample::of_role(Role::Replica)
                })
            }
            Answer::Refuse => Err(ProbeError::UnexpectedReply("refused".into())),
            Answer::Hang => {
                tokio::time::sleep(self.timeout).await;
                Err(ProbeError::Timeout(self.timeout))
            }
        }
    }
}

const I: Duration = Duration::from_millis(250);
const TIMEOUT: Duration = Duration::from_millis(1000);

struct Fake {
    counts: Arc<BeatCounts>,
    script: Arc<Script>,
    topology: SharedTopology,
    downs: Arc<Mutex<Vec<NodeId>>>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Fake {
    async fn start(answers: Vec<Answer>) -> Fake {
        let n = answers.len();
        let script = Script::new(answers);
        let nodes: Vec<NodeSpec> = (0..n).map(|i| node(i, 5432 + i as u16)).collect();
        let pulses = (0..n)
            .map(|i| FakePulse {
                node: i,
                script: script.clone(),
                timeout: TIMEOUT,
            })
            .collect();
        let topology = crate::shared(Topology::default());
        let downs = Arc::new(Mutex::new(Vec::new()));
        let d = downs.clone();
        let (stop, rx) = watch::channel(false);
        let (handle, counts) = HealthMonitor::spawn_with(
            nodes,
            pulses,
            settings(I, TIMEOUT),
            topology.clone(),
            Arc::new(move |id| d.lock().unwrap().push(id)),
            None,
            rx,
        );
        let fake = Fake {
            counts,
            script,
            topology,
            downs,
            stop,
            handle,
        };
        fake.until("all up", |t| {
            t.nodes.len() == n && t.nodes.iter().all(|n| n.up)
        })
        .await;
        fake
    }

    /// Waits (on the paused clock) until `f` holds; returns how long that took.
    async fn until(&self, what: &str, f: impl Fn(&Topology) -> bool) -> Duration {
        let start = Instant::now();
        while !f(&self.topology.load()) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never: {what}: {:?}",
                self.topology.load()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    fn read_target(&self) -> NodeId {
        router::choose(&self.topology.load(), Class::Read, 0, |_| 0)
            .unwrap()
            .node()
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.handle.await.unwrap();
    }
}

fn replica() -> Answer {
    Answer::Replica { frozen_at: None }
}

#[tokio::test(start_paused = true)]
async fn a_dead_replica_leaves_reads_within_two_intervals_and_comes_back() {
    let fake = Fake::start(vec![Answer::Primary, replica()]).await;
    assert_eq!(fake.read_target(), NodeId(1));
    fake.script.set(1, Answer::Refuse);
    let out = fake
        .until("replica out of reads", |t| t.replicas().next().is_none())
        .await;
    assert!(out <= 2 * I, "took {out:?}");
    let down = fake
        .until("replica down", |t| t.nodes[1].state == NodeState::Down)
        .await;
    assert!(down <= 2 * I + Duration::from_millis(10), "took {down:?}");
    assert_eq!(*fake.downs.lock().unwrap(), vec![NodeId(1)]);
    assert_eq!(fake.read_target(), NodeId(0));
    // While it stays dead, beats back off: far fewer than one per interval.
    let before = fake.script.beats.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = fake.script.beats.load(Ordering::Relaxed) - before;
    assert!(during < 40 + 10, "{during} beats in 10 s");
    // Every beat the pulses saw was counted per node.
    let counted = fake.counts.beats(NodeId(0)) + fake.counts.beats(NodeId(1));
    assert_eq!(counted, fake.script.beats.load(Ordering::Relaxed) as u64);
    // The healthy primary beat four times a second.
    let primary = fake.counts.beats(NodeId(0));
    let elapsed = fake.script.start.elapsed().as_secs_f64();
    assert!(
        (primary as f64 / elapsed - 4.0).abs() < 0.5,
        "{primary} in {elapsed}s"
    );
    fake.script.set(1, replica());
    let back = fake
        .until("replica back", |t| t.replicas().count() == 1)
        .await;
    assert!(back <= MAX_BACKOFF + I, "took {back:?}");
    assert_eq!(fake.read_target(), NodeId(1));
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_node_goes_suspect_then_down() {
    let fake = Fake::start(vec![Answer::Primary, replica()]).await;
    fake.script.set(1, Answer::Hang);
    let out = fake
        .until("replica out of reads", |t| t.replicas().next().is_none())
        .await;
    // The beat that hangs starts within an interval and fails at its timeout; a slow
    // beat is given its whole timeout.
    let slack = Duration::from_millis(10);
    assert!(out > TIMEOUT && out <= I + TIMEOUT + slack, "took {out:?}");
    let down = fake
        .until("replica down", |t| t.nodes[1].state == NodeState::Down)
        .await;
    // The next beat starts at once after the failure and fails one timeout later.
    assert!(down <= TIMEOUT + slack, "took {down:?} more");
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_role_flip_is_followed_within_one_interval() {
    let fake = Fake::start(vec![Answer::Primary, replica()]).await;
    fake.script.set(0, replica());
    fake.script.set(1, Answer::Primary);
    let took = fake
        .until("node 1 is the primary", |t| {
            t.primary().map(|p| p.id) == Some(NodeId(1)) && t.nodes[0].role == Role::Replica
        })
        .await;
    assert!(took <= I + Duration::from_millis(10), "took {took:?}");
    // A writable primary is never a node in recovery.
    let t = fake.topology.load();
    let w = router::choose(&t, Class::Write, 0, |_| 0).unwrap();
    assert_eq!(w.node(), NodeId(1));
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lagging_replica_leaves_reads_and_returns_after_catching_up() {
    let fake = Fake::start(vec![Answer::Primary, replica(), replica()]).await;
    let frozen = fake.script.lsn_now();
    let froze_at = Instant::now();
    fake.script.set(
        1,
        Answer::Replica {
            frozen_at: Some(frozen),
        },
    );
    // Reads keep going to node 1 until its lag passes the 1 s bound...
    fake.until("node 1 lagging", |t| t.nodes[1].state == NodeState::Lagging)
        .await;
    let left = froze_at.elapsed();
    assert!(
        left > Duration::from_secs(1) && left <= Duration::from_secs(1) + I + I,
        "left after {left:?}"
    );
    let t = fake.topology.load();
    assert!(t.nodes[1].lag.unwrap().time > Duration::from_secs(1));
    for spread in 0..10 {
        let r = router::choose(&t, Class::Read, spread, |_| 0).unwrap();
        assert_eq!(r.node(), NodeId(2));
    }
    // ...and come back once it has replayed everything.
    fake.script.set(1, replica());
    let back = fake
        .until("node 1 back", |t| t.nodes[1].state == NodeState::Up)
        .await;
    assert!(back <= I + Duration::from_millis(10), "took {back:?}");
    assert_eq!(
        fake.topology.load().nodes[1].lag,
        Some(router::Lag::default())
    );
    fake.stop().await;
}
