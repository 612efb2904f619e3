//! One dataflow over several processes (and machines): a Timely cluster.
//!
//! ```text
//!  process 0: workers 0..W        process 1: workers W..2W          … process N-1
//!   listens on hosts[0] ◄─────────── connects to every lower process ─┘
//!        │ handshake on every connection: protocol, process index, processes, workers and the
//!        │ run's identity (graph, plugins, engine build, table snapshots), refused on a mismatch
//!        ▼
//!  Timely's TCP allocator on those sockets: records exchanged by key, partitions by day,
//!  file descriptions and failures to worker 0 (process 0), which alone commits
//! ```
//!
//! Process `i` connects to every process below it and accepts every process above it, retrying
//! until `wait` has passed, then both ends of each connection send their handshake and read the
//! other's (one JSON document behind a length). Only sockets whose peer said the same about the
//! run reach Timely, so a process started with another graph or plugin build is refused at
//! start, with one line naming what differs, before any table is touched.
//!
//! Once running, a process that dies closes its sockets: Timely's receiving threads on the
//! others fail, their workers stop at their next step, and [`execute`] reports it as
//! [`Error::PeerFailed`]. A failure inside a process (an operator's error) travels as data to
//! the committer, which commits nothing from then on and tells every process to stop
//! (`dataflow::build`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// The handshake's format version: a process speaking another is refused.
const PROTOCOL: u32 = 1;

/// The first port of the default hosts (`127.0.0.1:2101`, `:2102`, …), as Timely's own default.
pub const DEFAULT_FIRST_PORT: u16 = 2101;

/// Where this process sits in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Processes in the run (1: no networking at all).
    pub processes: usize,
    /// This process's index, 0..processes. Process 0 runs the committing worker.
    pub process: usize,
    /// `host:port` each process listens on, by index.
    pub hosts: Vec<String>,
    /// How long to wait for the other processes to connect before giving up.
    pub wait: Duration,
}

impl Cluster {
    /// One process: no networking.
    pub fn single() -> Cluster {
        Cluster { processes: 1, process: 0, hosts: Vec::new(), wait: Duration::ZERO }
    }

    /// `processes` processes, this one `process`, listening on the hostfile's lines (one
    /// `host:port` per process, in process order; blank lines and `#` comments skipped) or, without
    /// one, on `127.0.0.1` from port 2101 up.
    pub fn new(processes: usize, process: usize, hostfile: Option<&Path>, wait: Duration) -> Result<Cluster> {
        if processes == 0 {
            return Err(Error::User("-n must be at least 1".into()));
        }
        if process >= processes {
            return Err(Error::User(format!("-p {process}: a cluster of {processes} processes has processes 0 to {}", processes - 1)));
        }
        let hosts: Vec<String> = match hostfile {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::User(format!("the hostfile {}: {e}", path.display())))?;
                text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).map(str::to_string).collect()
            }
            None => (0..processes).map(|i| format!("127.0.0.1:{}", usize::from(DEFAULT_FIRST_PORT) + i)).collect(),
        };
        if hosts.len() < processes {
            return Err(Error::User(format!(
                "the hostfile names {} host(s) for -n {processes}: one host:port line per process, in process order",
                hosts.len()
            )));
        }
        Ok(Cluster { processes, process, hosts: hosts[..processes].to_vec(), wait })
    }

    pub fn is_single(&self) -> bool {
        self.processes <= 1
    }
}

/// What every process of a run must agree on, as named facets in a fixed order: each process
/// computes its own and the handshake compares them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity(pub Vec<(String, String)>);

impl Identity {
    pub fn with(mut self, facet: &str, value: impl Into<String>) -> Identity {
        self.0.push((facet.to_string(), value.into()));
        self
    }
}

/// The current snapshot of each table, as a facet of the run's [`Identity`]: processes that read
/// different snapshots at their start would plan different runs.
pub fn snapshots(tables: &[&iceberg::table::Table]) -> String {
    tables
        .iter()
        .map(|table| format!("{}@{}", table.identifier(), table.metadata().current_snapshot_id().map_or("empty".to_string(), |id| id.to_string())))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Serialize, Deserialize)]
struct Handshake {
    protocol: u32,
    process: usize,
    processes: usize,
    workers: usize,
    identity: Identity,
}

/// How the processes of a run reach each other: one socket per other process, by index.
pub struct Connections {
    pub sockets: Vec<Option<TcpStream>>,
}

/// How often a process looks for a peer that has not connected yet, or dials one that did not
/// answer: processes of a cluster start within moments of each other, and every wait here adds to
/// the start of the run (a refused dial costs a round trip, an idle accept nothing).
const CONNECT_POLL: Duration = Duration::from_millis(5);

/// Connects this process to every other and checks each agrees on the run (see the module doc).
pub fn connect(cluster: &Cluster, workers: usize, identity: &Identity) -> Result<Connections> {
    let deadline = Instant::now() + cluster.wait;
    let me = cluster.process;
    let listener = TcpListener::bind(&cluster.hosts[me])
        .map_err(|e| Error::ClusterStart(format!("process {me} cannot listen on {} (its hostfile line): {e}", cluster.hosts[me])))?;
    listener.set_nonblocking(true).context(|| "setting up the cluster listener".into())?;
    let ours = Handshake { protocol: PROTOCOL, process: me, processes: cluster.processes, workers, identity: identity.clone() };
    let mut sockets: Vec<Option<TcpStream>> = (0..cluster.processes).map(|_| None).collect();
    for (peer, host) in cluster.hosts.iter().enumerate().take(me) {
        let stream = dial(host, deadline).map_err(|e| {
            Error::ClusterStart(format!(
                "process {peer} at {host} did not accept a connection within {:?} ({e}): start it with -n {} -p {peer}, or check its host and port",
                cluster.wait, cluster.processes
            ))
        })?;
        sockets[peer] = Some(greet(stream, &ours, Some(peer), cluster, deadline)?.0);
    }
    while sockets.iter().enumerate().any(|(peer, socket)| peer > me && socket.is_none()) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (stream, peer) = greet(stream, &ours, None, cluster, deadline)?;
                if sockets[peer].is_some() {
                    return Err(Error::ClusterStart(format!("two processes were started with -p {peer}")));
                }
                sockets[peer] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> =
                        (me + 1..cluster.processes).filter(|p| sockets[*p].is_none()).map(|p| format!("{p} ({})", cluster.hosts[p])).collect();
                    return Err(Error::ClusterStart(format!(
                        "process(es) {} did not connect within {:?}: start each with -n {} -p <index> and the same hostfile",
                        missing.join(", "),
                        cluster.wait,
                        cluster.processes
                    )));
                }
                std::thread::sleep(CONNECT_POLL);
            }
            Err(e) => return Err(Error::ClusterStart(format!("accepting connections on {}: {e}", cluster.hosts[me]))),
        }
    }
    Ok(Connections { sockets })
}

fn dial(host: &str, deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        let attempt = host.to_socket_addrs().and_then(|mut addresses| {
            let address = addresses.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            TcpStream::connect_timeout(&address, Duration::from_secs(1))
        });
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(CONNECT_POLL),
        }
    }
}

/// Sends our handshake, reads the peer's and checks it; returns the socket and the peer's index.
/// `expected`: the index of the process we dialed (`None`: we accepted, and the peer must be
/// above us).
fn greet(mut stream: TcpStream, ours: &Handshake, expected: Option<usize>, cluster: &Cluster, deadline: Instant) -> Result<(TcpStream, usize)> {
    let fail = |e: std::io::Error| Error::ClusterStart(format!("handshake with another process: {e}"));
    stream.set_nonblocking(false).map_err(fail)?;
    stream.set_nodelay(true).map_err(fail)?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
    stream.set_read_timeout(Some(left)).map_err(fail)?;
    let body = serde_json::to_vec(ours).map_err(|e| Error::Internal(format!("encoding the handshake: {e}")))?;
    stream.write_all(&(body.len() as u32).to_be_bytes()).map_err(fail)?;
    stream.write_all(&body).map_err(fail)?;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(fail)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > 1 << 20 {
        return Err(Error::ClusterStart("something that is not a ratings-flow process connected to the cluster port".into()));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).map_err(fail)?;
    let theirs: Handshake = serde_json::from_slice(&body)
        .map_err(|_| Error::ClusterStart("something that is not a ratings-flow process of this version connected to the cluster port".into()))?;
    let who = format!("process {}", theirs.process);
    if theirs.protocol != PROTOCOL {
        return Err(Error::ClusterStart(format!("{who} speaks cluster protocol {}, this process {PROTOCOL}: run the same engine build everywhere", theirs.protocol)));
    }
    if theirs.processes != ours.processes {
        return Err(Error::ClusterStart(format!("{who} was started with -n {}, this process with -n {}", theirs.processes, ours.processes)));
    }
    let acceptable = match expected {
        Some(peer) => theirs.process == peer,
        None => theirs.process > ours.process && theirs.process < ours.processes,
    };
    if !acceptable {
        return Err(Error::ClusterStart(format!(
            "process -p {} reached this process (-p {}) at {}: two processes were started with the same -p, or the hostfiles differ",
            theirs.process, ours.process, cluster.hosts[ours.process]
        )));
    }
    if theirs.workers != ours.workers {
        return Err(Error::ClusterStart(format!("{who} runs -w {} workers, this process -w {}: every process needs the same -w", theirs.workers, ours.workers)));
    }
    for ((facet, mine), (_, other)) in ours.identity.0.iter().zip(&theirs.identity.0) {
        if mine != other {
            return Err(Error::ClusterStart(format!(
                "{who} runs a different {facet} ({other} there, {mine} here): every process needs the same graph file, plugins, engine build and tables"
            )));
        }
    }
    if ours.identity.0.len() != theirs.identity.0.len() {
        return Err(Error::ClusterStart(format!("{who} describes its run differently: run the same engine build everywhere")));
    }
    stream.set_read_timeout(None).map_err(fail)?;
    Ok((stream, theirs.process))
}

/// Runs `logic` on `workers` worker threads of this process, connected to the other processes of
/// `cluster` (none for a single process). Returns the bytes sent to other processes.
pub fn run(
    workers: usize,
    cluster: &Cluster,
    identity: &Identity,
    logic: impl Fn(&mut timely::worker::Worker) + Send + Sync + 'static,
) -> Result<u64> {
    if cluster.is_single() {
        let guards = timely::execute(timely::Config::process(workers), logic)
            .map_err(|e| Error::Internal(format!("starting the dataflow workers: {e}")))?;
        for result in guards.join() {
            result.map_err(|e| Error::Internal(format!("a dataflow worker panicked: {e}")))?;
        }
        return Ok(0);
    }
    use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
    use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
    use timely::communication::logging::CommunicationEvent;

    let connections = connect(cluster, workers, identity)?;
    quiet_connection_panics();
    // Bytes this process sends the others (message headers included), summed by a logger on
    // each send thread.
    let volume = Arc::new(AtomicU64::new(0));
    let sent = volume.clone();
    let mut hooks = timely::communication::Hooks::default();
    hooks.log_fn = Arc::new(move |setup| {
        if !setup.sender {
            return None;
        }
        let sent = sent.clone();
        Some(timely::logging_core::Logger::new(Instant::now(), Duration::ZERO, move |_, events: &mut Option<Vec<(Duration, CommunicationEvent)>>| {
            for (_, event) in events.iter().flatten() {
                if let CommunicationEvent::Message(message) = event {
                    sent.fetch_add(message.header.required_bytes() as u64, Ordering::Relaxed);
                }
            }
        }))
    });
    let allocators = ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
    let (builders, comms) = initialize_networking_from_sockets(allocators, connections.sockets, cluster.process, workers, hooks)
        .map_err(|e| Error::ClusterStart(format!("starting the cluster's connections: {e}")))?;
    let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    let guards = timely::execute::execute_from(builders, Box::new(()), timely::WorkerConfig::default(), logic)
        .map_err(|e| Error::Internal(format!("starting the dataflow workers: {e}")))?;
    let mut lost = None;
    for result in guards.join() {
        if let Err(panic) = result {
            lost.get_or_insert(panic);
        }
    }
    if let Some(panic) = lost {
        // The connection threads panicked too: joining them would panic again. The process is
        // about to report the error and exit.
        std::mem::forget(comms);
        return Err(match CONNECTION_LOST.load(Ordering::Relaxed) {
            true => Error::PeerFailed("lost the connection to another process (it stopped, was killed, or the network between them failed)".into()),
            false => Error::Internal(format!("a dataflow worker panicked: {panic}")),
        });
    }
    // Joins the connection threads once every message is sent; a peer vanishing during that
    // last exchange makes a receiving thread panic.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(comms)))
        .map_err(|_| Error::PeerFailed("lost the connection to another process while finishing the run".into()))?;
    Ok(volume.load(Ordering::Relaxed))
}

/// Whether a thread of this process panicked because a connection to another process was lost
/// (worker panics reach [`run`] without their message).
static CONNECTION_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a panic message is Timely's reaction to a lost connection.
fn connection_lost(panic: &str) -> bool {
    panic.contains("MergeQueue poisoned") || panic.contains("timely communication error")
}

/// Timely reacts to a lost connection by panicking its connection threads and then its workers;
/// [`run`] turns that into one error, so those panics print nothing of their own.
fn quiet_connection_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if connection_lost(text) || text.contains("Recv thread panic") || text.contains("Send thread panic") {
                CONNECTION_LOST.store(true, Ordering::Relaxed);
                tracing::debug!("{text}");
                return;
            }
            default(info);
        }));
    });
}
