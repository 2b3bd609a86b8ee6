//! `GET /metrics` (Prometheus text) and `GET /health` for load balancers (SPEC §5.10).
//!
//! [`Metrics`] holds the metric families; the engine updates them as things happen (each update
//! is an atomic operation on a labelled series, after a hash lookup of the label set) and may
//! install a [`Collector`] that refreshes gauges from live state when a scrape comes in. The
//! text is written by `prometheus-client` in the Prometheus text format 0.0.4; the HTTP side is
//! hyper (HTTP/1.1 only, one request per connection).
//!
//! Invariants:
//! - A scrape costs the collector plus encoding the series: no scan, no walk of the index. The
//!   collector must only read counters and small state (per group or per peer, never per file).
//! - `/health` calls the engine's [`HealthFn`] once and nothing else: O(1) per request, even with
//!   1,000,000 files. The closure must only read atomics or small state behind a short lock.
//! - The listener is bounded: at most [`MAX_CONNECTIONS`] connections at once, the request head
//!   must arrive within 10 s and a connection lives at most 30 s.
//! - [`serve`] binds before it returns, so a bad or busy address fails the daemon's start-up
//!   with the address in the message.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// How long `/health` tolerates remote changes known but not applied (`[metrics] stale_after`).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The listen address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing the text format failed.
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Label set of per-group series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

/// Label set of per-peer series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

/// Label set of per-action series: the group and the action's index in it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    group: String,
    action: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn scan_histogram() -> Histogram {
    // 10 ms … ~40 min
    Histogram::new(exponential_buckets(0.01, 3.0, 12))
}

/// The gauges of one group, as `status` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupGauges {
    pub files: u64,
    pub bytes: u64,
    pub pending: u64,
    pub conflicts: u64,
    /// Stopped by an error (SPEC §5.6).
    pub stopped: bool,
}

/// Refreshes gauges from live state at scrape time. Must be cheap (see the module doc).
pub type Collector = Arc<dyn Fn(&Metrics) + Send + Sync>;

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metric families of one node, all named `clustersync_…`.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    collector: Mutex<Option<Collector>>,
    group_files: Family<GroupLabels, Gauge>,
    group_bytes: Family<GroupLabels, Gauge>,
    group_pending: Family<GroupLabels, Gauge>,
    group_conflicts: Family<GroupLabels, Gauge>,
    group_stopped: Family<GroupLabels, Gauge>,
    peer_connected: Family<PeerLabels, Gauge>,
    peer_behind: Family<PeerLabels, Gauge>,
    peer_sent: Family<PeerLabels, Counter>,
    peer_received: Family<PeerLabels, Counter>,
    changes_applied: Family<GroupLabels, Counter>,
    changes_sent: Family<GroupLabels, Counter>,
    diverged: Family<GroupLabels, Counter>,
    apply_latency: HistogramFamily<GroupLabels>,
    scan_duration: HistogramFamily<GroupLabels>,
    action_runs: Family<ActionLabels, Counter>,
    action_failures: Family<ActionLabels, Counter>,
    backups_bytes: Gauge,
    uptime: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Register every family. Series appear once the engine sets them (a group or peer with no
    /// update yet has no series).
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("clustersync");
        let m = Metrics {
            registry: Registry::default(),
            started: Instant::now(),
            collector: Mutex::new(None),
            group_files: Family::default(),
            group_bytes: Family::default(),
            group_pending: Family::default(),
            group_conflicts: Family::default(),
            group_stopped: Family::default(),
            peer_connected: Family::default(),
            peer_behind: Family::default(),
            peer_sent: Family::default(),
            peer_received: Family::default(),
            changes_applied: Family::default(),
            changes_sent: Family::default(),
            diverged: Family::default(),
            apply_latency: Family::new_with_constructor(latency_histogram),
            scan_duration: Family::new_with_constructor(scan_histogram),
            action_runs: Family::default(),
            action_failures: Family::default(),
            backups_bytes: Gauge::default(),
            uptime: Gauge::default(),
        };
        r.register(
            "group_files",
            "Files of the group indexed on this node",
            m.group_files.clone(),
        );
        r.register(
            "group_bytes",
            "Bytes of the group's files on this node",
            m.group_bytes.clone(),
        );
        r.register(
            "group_pending",
            "Changes of the group known but not yet applied or sent",
            m.group_pending.clone(),
        );
        r.register(
            "group_conflicts",
            "Unresolved conflicts in the group",
            m.group_conflicts.clone(),
        );
        r.register(
            "group_stopped",
            "1 when the group is stopped on this node by an error",
            m.group_stopped.clone(),
        );
        r.register(
            "peer_connected",
            "1 when the link to the peer is up",
            m.peer_connected.clone(),
        );
        r.register(
            "peer_behind",
            "Changes the peer has not received yet, as status shows it",
            m.peer_behind.clone(),
        );
        r.register(
            "peer_sent_bytes",
            "Bytes sent to the peer",
            m.peer_sent.clone(),
        );
        r.register(
            "peer_received_bytes",
            "Bytes received from the peer",
            m.peer_received.clone(),
        );
        r.register(
            "changes_applied",
            "Changes from peers applied on this node",
            m.changes_applied.clone(),
        );
        r.register(
            "changes_sent",
            "Changes of this node sent to peers",
            m.changes_sent.clone(),
        );
        r.register(
            "diverged",
            "Paths found different from a peer (or, with verify --deep, from the disk) by comparing index summaries",
            m.diverged.clone(),
        );
        r.register(
            "apply_latency_seconds",
            "From the origin's commit of a change to its rename into place here",
            m.apply_latency.clone(),
        );
        r.register(
            "scan_duration_seconds",
            "Duration of full scans of a group",
            m.scan_duration.clone(),
        );
        r.register(
            "action_runs",
            "Runs of a group's action (action = its index in the group)",
            m.action_runs.clone(),
        );
        r.register(
            "action_failures",
            "Runs of an action that did not exit with status 0",
            m.action_failures.clone(),
        );
        r.register(
            "backups_bytes",
            "Disk space used by kept previous versions",
            m.backups_bytes.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since the daemon started",
            m.uptime.clone(),
        );
        r.register(
            "build",
            "Version of this build",
            Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        Metrics { registry: r, ..m }
    }

    /// Install (or replace) the scrape-time collector.
    pub fn set_collector(&self, c: Collector) {
        *self.collector.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
    }

    fn group(group: &str) -> GroupLabels {
        GroupLabels {
            group: group.to_owned(),
        }
    }

    fn peer(peer: &str) -> PeerLabels {
        PeerLabels {
            peer: peer.to_owned(),
        }
    }

    /// Set a group's gauges.
    pub fn set_group(&self, group: &str, g: GroupGauges) {
        let l = Self::group(group);
        self.group_files.get_or_create(&l).set(gauge_value(g.files));
        self.group_bytes.get_or_create(&l).set(gauge_value(g.bytes));
        self.group_pending
            .get_or_create(&l)
            .set(gauge_value(g.pending));
        self.group_conflicts
            .get_or_create(&l)
            .set(gauge_value(g.conflicts));
        self.group_stopped
            .get_or_create(&l)
            .set(i64::from(g.stopped));
    }

    /// Set a peer's link state and how far it is behind.
    pub fn set_peer(&self, peer: &str, connected: bool, behind: u64) {
        let l = Self::peer(peer);
        self.peer_connected
            .get_or_create(&l)
            .set(i64::from(connected));
        self.peer_behind.get_or_create(&l).set(gauge_value(behind));
    }

    /// Count bytes sent to and received from a peer.
    pub fn add_peer_bytes(&self, peer: &str, sent: u64, received: u64) {
        let l = Self::peer(peer);
        self.peer_sent.get_or_create(&l).inc_by(sent);
        self.peer_received.get_or_create(&l).inc_by(received);
    }

    /// Count changes of `group` applied here.
    pub fn changes_applied(&self, group: &str, n: u64) {
        self.changes_applied
            .get_or_create(&Self::group(group))
            .inc_by(n);
    }

    /// Count changes of `group` sent to peers.
    pub fn changes_sent(&self, group: &str, n: u64) {
        self.changes_sent
            .get_or_create(&Self::group(group))
            .inc_by(n);
    }

    /// Count paths of `group` found different by a comparison (SPEC §5.14).
    pub fn diverged(&self, group: &str, n: u64) {
        self.diverged.get_or_create(&Self::group(group)).inc_by(n);
    }

    /// One change's latency from the origin's commit to the local rename (when measurable).
    pub fn observe_apply_latency(&self, group: &str, d: Duration) {
        self.apply_latency
            .get_or_create(&Self::group(group))
            .observe(d.as_secs_f64());
    }

    /// One full scan of a group.
    pub fn observe_scan(&self, group: &str, d: Duration) {
        self.scan_duration
            .get_or_create(&Self::group(group))
            .observe(d.as_secs_f64());
    }

    /// One finished action run.
    pub fn action_finished(&self, group: &str, index: usize, success: bool) {
        let l = ActionLabels {
            group: group.to_owned(),
            action: index.to_string(),
        };
        self.action_runs.get_or_create(&l).inc();
        if success {
            // create the series so that `failures` shows 0 rather than nothing
            let _ = self.action_failures.get_or_create(&l);
        } else {
            self.action_failures.get_or_create(&l).inc();
        }
    }

    /// [`Metrics::action_finished`] from the runner's result.
    pub fn observe_action(&self, r: &super::actions::ActionResult) {
        self.action_finished(&r.group, r.index, r.success());
    }

    /// Disk space used by kept versions.
    pub fn set_backups_bytes(&self, bytes: u64) {
        self.backups_bytes.set(gauge_value(bytes));
    }

    /// Drop the series of a group that is no longer configured (after a reload).
    pub fn forget_group(&self, group: &str) {
        let l = Self::group(group);
        for f in [
            &self.group_files,
            &self.group_bytes,
            &self.group_pending,
            &self.group_conflicts,
            &self.group_stopped,
        ] {
            f.remove(&l);
        }
        self.changes_applied.remove(&l);
        self.changes_sent.remove(&l);
        self.diverged.remove(&l);
        self.apply_latency.remove(&l);
        self.scan_duration.remove(&l);
    }

    /// Drop the series of a peer that is no longer configured (after a reload).
    pub fn forget_peer(&self, peer: &str) {
        let l = Self::peer(peer);
        self.peer_connected.remove(&l);
        self.peer_behind.remove(&l);
        self.peer_sent.remove(&l);
        self.peer_received.remove(&l);
    }

    /// Run the collector and write every series in the Prometheus text format.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let c = self
            .collector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(c) = c {
            c(self);
        }
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut s = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry)?;
        Ok(s)
    }
}

/// What `/health` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// 200: this node serves current content.
    Ok,
    /// 503 with this one-line reason.
    Unhealthy(String),
}

/// The engine's health check: O(1), reads only atomics or small state.
pub type HealthFn = Arc<dyn Fn() -> Health + Send + Sync>;

/// What [`judge`] needs of one group: all of it kept current by the engine, none of it computed
/// per request.
#[derive(Debug, Clone, Copy)]
pub struct GroupHealth<'a> {
    pub name: &'a str,
    /// Why the group is stopped, if it is.
    pub stopped: Option<&'a str>,
    /// Since when remote changes are known but not applied (`None`: nothing waits).
    pub unapplied_since: Option<Instant>,
    /// Peers of this group, and how many of them are connected.
    pub peers: usize,
    pub peers_connected: usize,
}

/// SPEC §5.10's rule: unhealthy when a group is stopped, when remote changes waited longer than
/// `stale_after`, or when the node is cut off from every peer of a group. The first group that
/// fails, in the order given, names the reason.
pub fn judge<'a>(
    groups: impl IntoIterator<Item = GroupHealth<'a>>,
    now: Instant,
    stale_after: Duration,
) -> Health {
    for g in groups {
        if let Some(why) = g.stopped {
            return Health::Unhealthy(format!("group {} stopped: {why}", g.name));
        }
        if let Some(t) = g.unapplied_since {
            let waited = now.saturating_duration_since(t);
            if waited > stale_after {
                return Health::Unhealthy(format!(
                    "group {}: remote changes not applied for {}s",
                    g.name,
                    waited.as_secs()
                ));
            }
        }
        if g.peers > 0 && g.peers_connected == 0 {
            return Health::Unhealthy(format!(
                "group {}: cut off from all {} peers",
                g.name, g.peers
            ));
        }
    }
    Health::Ok
}

/// A running listener.
#[derive(Debug)]
pub struct MetricsServer {
    /// Where it listens (the real port when the address had port 0).
    pub local_addr: SocketAddr,
    /// Ends after `shutdown` turns true; its open connections are closed then.
    pub task: JoinHandle<()>,
}

/// Bind `addr` (`host:port`) at once and serve `/metrics` and `/health` until `shutdown` turns
/// true (or its sender is dropped).
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    health: HealthFn,
    shutdown: watch::Receiver<bool>,
) -> Result<MetricsServer, MetricsError> {
    let bind_err = |source| MetricsError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    tracing::info!("metrics and health on http://{local_addr}/metrics and /health");
    let task = tokio::spawn(accept_loop(listener, metrics, health, shutdown));
    Ok(MetricsServer { local_addr, task })
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: HealthFn,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let stop = async move {
        // the sender gone counts as a shutdown too
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // e.g. out of file descriptors: do not spin
                    tracing::warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let (m, h) = (metrics.clone(), health.clone());
        conns.spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let (m, h) = (m.clone(), h.clone());
                async move { Ok::<_, Infallible>(respond(&req, &m, &h)) }
            });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics connection from {peer}: {e}"),
                Err(_) => tracing::debug!("metrics connection from {peer}: too slow, closed"),
            }
        });
    }
    // dropping the set closes the open connections
    conns.shutdown().await;
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn respond(req: &Request<Incoming>, m: &Metrics, h: &HealthFn) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    match (readable, path) {
        (true, "/metrics") => match m.encode() {
            Ok(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    ),
                );
                r
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        (true, "/health") => {
            let mut r = match h() {
                Health::Ok => text(StatusCode::OK, "ok\n".to_owned()),
                Health::Unhealthy(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{}\n", why.replace(['\r', '\n'], " ")),
                ),
            };
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        (false, "/metrics" | "/health") => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".to_owned(),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /health\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 request; returns the status, the head and the body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            String::from_utf8(buf).unwrap()
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("the server answers in time");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_owned(), body.to_owned())
    }

    struct Server {
        addr: SocketAddr,
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    async fn start(m: Arc<Metrics>, h: HealthFn) -> Server {
        let (stop, rx) = watch::channel(false);
        let s = serve("127.0.0.1:0", m, h, rx).await.unwrap();
        Server {
            addr: s.local_addr,
            stop,
            task: s.task,
        }
    }

    fn always_ok() -> HealthFn {
        Arc::new(|| Health::Ok)
    }

    #[tokio::test]
    async fn metrics_parse_as_prometheus_text_with_every_family() {
        let m = Arc::new(Metrics::new());
        m.set_group(
            "www",
            GroupGauges {
                files: 1234,
                bytes: 5678,
                pending: 2,
                conflicts: 1,
                stopped: false,
            },
        );
        m.set_group(
            "etc",
            GroupGauges {
                stopped: true,
                ..Default::default()
            },
        );
        m.set_peer("web2", true, 0);
        m.set_peer("web3", false, 42);
        m.add_peer_bytes("web2", 1000, 2000);
        m.changes_applied("www", 5);
        m.changes_sent("www", 3);
        m.observe_apply_latency("www", Duration::from_millis(3));
        m.observe_apply_latency("www", Duration::from_millis(30));
        m.observe_scan("www", Duration::from_millis(250));
        m.action_finished("www", 0, true);
        m.action_finished("www", 0, false);
        m.set_backups_bytes(4096);
        let scrapes = Arc::new(AtomicUsize::new(0));
        let s2 = scrapes.clone();
        m.set_collector(Arc::new(move |m: &Metrics| {
            s2.fetch_add(1, Ordering::SeqCst);
            m.set_peer("web2", true, 7);
        }));
        let srv = start(m.clone(), always_ok()).await;
        let (code, head, body) = request(srv.addr, "GET", "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert_eq!(
            scrapes.load(Ordering::SeqCst),
            1,
            "collector runs per scrape"
        );

        let scrape =
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .map(|s| match &s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => *v,
                    prometheus_parse::Value::Histogram(h) => {
                        h.iter().map(|b| b.count).fold(0.0, f64::max)
                    }
                    prometheus_parse::Value::Summary(_) => f64::NAN,
                })
        };
        let www = [("group", "www")];
        assert_eq!(value("clustersync_group_files", &www), Some(1234.0));
        assert_eq!(value("clustersync_group_bytes", &www), Some(5678.0));
        assert_eq!(value("clustersync_group_pending", &www), Some(2.0));
        assert_eq!(value("clustersync_group_conflicts", &www), Some(1.0));
        assert_eq!(value("clustersync_group_stopped", &www), Some(0.0));
        assert_eq!(
            value("clustersync_group_stopped", &[("group", "etc")]),
            Some(1.0)
        );
        assert_eq!(
            value("clustersync_peer_connected", &[("peer", "web2")]),
            Some(1.0)
        );
        assert_eq!(
            value("clustersync_peer_connected", &[("peer", "web3")]),
            Some(0.0)
        );
        assert_eq!(
            value("clustersync_peer_behind", &[("peer", "web2")]),
            Some(7.0),
            "set by the collector"
        );
        assert_eq!(
            value("clustersync_peer_behind", &[("peer", "web3")]),
            Some(42.0)
        );
        assert_eq!(
            value("clustersync_peer_sent_bytes_total", &[("peer", "web2")]),
            Some(1000.0)
        );
        assert_eq!(
            value("clustersync_peer_received_bytes_total", &[("peer", "web2")]),
            Some(2000.0)
        );
        assert_eq!(value("clustersync_changes_applied_total", &www), Some(5.0));
        assert_eq!(value("clustersync_changes_sent_total", &www), Some(3.0));
        assert_eq!(
            value("clustersync_apply_latency_seconds", &www),
            Some(2.0),
            "two observations in the histogram"
        );
        assert_eq!(
            value("clustersync_apply_latency_seconds_count", &www),
            Some(2.0)
        );
        assert_eq!(
            value("clustersync_scan_duration_seconds_count", &www),
            Some(1.0)
        );
        let act = [("group", "www"), ("action", "0")];
        assert_eq!(value("clustersync_action_runs_total", &act), Some(2.0));
        assert_eq!(value("clustersync_action_failures_total", &act), Some(1.0));
        assert_eq!(value("clustersync_backups_bytes", &[]), Some(4096.0));
        assert!(value("clustersync_uptime_seconds", &[]).is_some_and(|v| v >= 0.0));
        assert_eq!(
            value(
                "clustersync_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
        for family in [
            "clustersync_group_files",
            "clustersync_peer_sent_bytes_total",
            "clustersync_apply_latency_seconds",
            "clustersync_action_failures_total",
        ] {
            assert!(scrape.docs.contains_key(family), "HELP of {family}");
        }

        m.forget_peer("web3");
        let (_, _, body) = request(srv.addr, "GET", "/metrics").await;
        assert!(!body.contains("web3"));
        let _ = srv.stop.send(true);
    }

    #[tokio::test]
    async fn health_answers_200_or_503_with_the_reason() {
        let bad = Arc::new(AtomicBool::new(false));
        let b2 = bad.clone();
        let h: HealthFn = Arc::new(move || {
            if b2.load(Ordering::SeqCst) {
                Health::Unhealthy("group www stopped: /srv/www is missing\nsecond line".into())
            } else {
                Health::Ok
            }
        });
        let srv = start(Arc::new(Metrics::new()), h).await;
        let (code, _, body) = request(srv.addr, "GET", "/health").await;
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        bad.store(true, Ordering::SeqCst);
        let (code, _, body) = request(srv.addr, "GET", "/health").await;
        assert_eq!(code, 503);
        assert_eq!(
            body, "group www stopped: /srv/www is missing second line\n",
            "one line"
        );
        let (code, head, body) = request(srv.addr, "HEAD", "/health").await;
        assert_eq!((code, body.as_str()), (503, ""));
        assert!(
            head.to_ascii_lowercase()
                .contains("cache-control: no-store")
        );
        bad.store(false, Ordering::SeqCst);
        let (code, _, _) = request(srv.addr, "GET", "/health").await;
        assert_eq!(code, 200);
        let _ = srv.stop.send(true);
    }

    #[tokio::test]
    async fn other_paths_are_404_and_other_methods_405() {
        let srv = start(Arc::new(Metrics::new()), always_ok()).await;
        for p in ["/", "/metricsx", "/health/", "/favicon.ico"] {
            assert_eq!(request(srv.addr, "GET", p).await.0, 404, "{p}");
        }
        let (code, head, _) = request(srv.addr, "POST", "/metrics").await;
        assert_eq!(code, 405);
        assert!(head.to_ascii_lowercase().contains("allow: get, head"));
        let _ = srv.stop.send(true);
    }

    #[tokio::test]
    async fn a_busy_address_fails_at_once_naming_it() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (_stop, rx) = watch::channel(false);
        let e = serve(&addr, Arc::new(Metrics::new()), always_ok(), rx)
            .await
            .unwrap_err();
        assert!(matches!(e, MetricsError::Bind { .. }));
        assert!(e.to_string().contains(&addr), "{e}");
        let (_stop, rx) = watch::channel(false);
        let e = serve("not an address", Arc::new(Metrics::new()), always_ok(), rx)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not an address"), "{e}");
    }

    #[tokio::test]
    async fn shutdown_stops_the_listener() {
        let srv = start(Arc::new(Metrics::new()), always_ok()).await;
        assert_eq!(request(srv.addr, "GET", "/health").await.0, 200);
        // an idle connection does not hold the shutdown up
        let _idle = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        srv.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), srv.task)
            .await
            .expect("stops in time")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(srv.addr).await.is_err());
    }

    #[test]
    fn judge_follows_the_spec_rules() {
        let now = Instant::now();
        let ok = GroupHealth {
            name: "www",
            stopped: None,
            unapplied_since: None,
            peers: 2,
            peers_connected: 1,
        };
        let stale = DEFAULT_STALE_AFTER;
        assert_eq!(judge([ok], now, stale), Health::Ok);
        let stopped = GroupHealth {
            stopped: Some("/srv/www is empty"),
            ..ok
        };
        assert_eq!(
            judge([ok, stopped], now, stale),
            Health::Unhealthy("group www stopped: /srv/www is empty".into())
        );
        let behind = GroupHealth {
            unapplied_since: now.checked_sub(Duration::from_secs(12)),
            ..ok
        };
        let Health::Unhealthy(why) = judge([behind], now, stale) else {
            panic!("behind for 12 s is unhealthy");
        };
        assert!(why.contains("not applied for 12s"), "{why}");
        let recent = GroupHealth {
            unapplied_since: now.checked_sub(Duration::from_secs(2)),
            ..ok
        };
        assert_eq!(judge([recent], now, stale), Health::Ok);
        let cut = GroupHealth {
            peers_connected: 0,
            ..ok
        };
        assert_eq!(
            judge([cut], now, stale),
            Health::Unhealthy("group www: cut off from all 2 peers".into())
        );
        let alone = GroupHealth {
            peers: 0,
            peers_connected: 0,
            ..ok
        };
        assert_eq!(judge([alone], now, stale), Health::Ok);
    }
}
