//! A whole system in one test process: a real nats-server and the three services' real code
//! (the same `server::serve` the binaries run), each with its own sled store and its own
//! adjustable clock, plus helpers that drive it the way users do (through fxctl's library).

#![allow(dead_code)] // each test file uses a different part of the fixture

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use events::{Event, Krw, Rate, SagaId, Usd, UserId};
use runtime::{Clock, JournalEntry, NatsConfig, Runtime, RuntimeConfig, Store};
use testkit::{wait_for, NatsCluster, NatsServer, NatsServerBuilder};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a saga may take in a test before it counts as stuck.
pub const SAGA_DEADLINE_MS: u64 = 30_000;

/// The broker identities of `config/nats.conf`.
pub const IDENTITIES: [&str; 6] = ["krw", "trade", "usd", "tracker", "client", "admin"];

/// A password for each identity of `config/nats.conf`, new for every test.
#[derive(Clone, Debug)]
pub struct Identities {
    passwords: HashMap<&'static str, String>,
}

impl Identities {
    /// Fresh random passwords (letters and digits, starting with a letter, as the config
    /// requires).
    pub fn random() -> Identities {
        let passwords = IDENTITIES
            .iter()
            .map(|&who| (who, format!("fx{}", uuid::Uuid::new_v4().simple())))
            .collect();
        Identities { passwords }
    }

    /// The password of an identity.
    pub fn password(&self, who: &str) -> &str {
        &self.passwords[who]
    }

    /// The variable `config/nats.conf` reads the identity's password from.
    pub fn env_var(who: &str) -> String {
        format!("FX_NATS_PASSWORD_{}", who.to_ascii_uppercase())
    }

    /// The broker settings a process of this identity uses (`NATS_USER`/`NATS_PASSWORD`).
    pub fn nats_config(&self, url: &str, who: &str) -> NatsConfig {
        let mut cfg = NatsConfig::with_url(url);
        cfg.user_password = Some((who.to_owned(), self.password(who).to_owned()));
        cfg
    }

    /// A nats-server with the project's `config/nats.conf` and these passwords.
    pub fn broker(&self) -> NatsServer {
        self.broker_builder().start()
    }

    /// How to start that broker, to set more (e.g. where its store lives).
    pub fn broker_builder(&self) -> NatsServerBuilder {
        let mut builder =
            NatsServer::builder().config(testkit::workspace_root().join("config/nats.conf"));
        for who in IDENTITIES {
            builder = builder.env(Identities::env_var(who), self.password(who));
        }
        builder
    }

    /// Connects as `who`.
    pub async fn connect(&self, url: &str, who: &str) -> async_nats::Client {
        // The identity's own inbox prefix, as runtime::connect sets it (config/nats.conf lets
        // each identity subscribe only there).
        async_nats::ConnectOptions::with_user_and_password(who.into(), self.password(who).into())
            .custom_inbox_prefix(format!("_INBOX_{who}"))
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect as {who}: {e}"))
    }
}

/// The broker a [`System`] runs on: one server, or a local cluster.
pub enum Broker {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Broker {
    /// The client URL; for a cluster, every node's, comma-separated.
    pub fn url(&self) -> String {
        match self {
            Broker::Single(s) => s.url(),
            Broker::Cluster(c) => c.urls(),
        }
    }

    /// The client URLs as a list (what `async_nats::connect` takes for several servers).
    pub fn url_list(&self) -> Vec<String> {
        match self {
            Broker::Single(s) => vec![s.url()],
            Broker::Cluster(c) => c.url_list(),
        }
    }

    /// Restarts the single server (panics on a cluster: restart one node through
    /// [`Broker::cluster_mut`]).
    pub fn restart(&mut self) {
        match self {
            Broker::Single(s) => s.restart(),
            Broker::Cluster(_) => panic!("restart a cluster node by index"),
        }
    }

    /// The single server's log (panics on a cluster).
    pub fn log(&self) -> Vec<String> {
        match self {
            Broker::Single(s) => s.log(),
            Broker::Cluster(_) => panic!("a cluster has one log per node"),
        }
    }

    /// The cluster (panics on a single server).
    pub fn cluster(&self) -> &NatsCluster {
        match self {
            Broker::Cluster(c) => c,
            Broker::Single(_) => panic!("not a cluster"),
        }
    }

    /// The cluster, to kill and restart nodes (panics on a single server).
    pub fn cluster_mut(&mut self) -> &mut NatsCluster {
        match self {
            Broker::Cluster(c) => c,
            Broker::Single(_) => panic!("not a cluster"),
        }
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<runtime::Result<()>>,
}

/// The running system.
pub struct System {
    pub nats: Broker,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    dir: tempfile::TempDir,
    /// Per-service clock offsets in ms, added to the wall clock (to cross expiries at will).
    offsets: HashMap<&'static str, Arc<AtomicU64>>,
    stores: HashMap<&'static str, Arc<Store>>,
    running: HashMap<&'static str, Running>,
    pub krw_config: krw::KrwConfig,
    pub trade_config: trade::TradeConfig,
    pub usd_config: usd::UsdConfig,
    pub venue: Arc<trade::SimulatedVenue>,
    trade_service: Option<Arc<trade::TradeService>>,
    /// With `config/nats.conf`: each service connects as its own identity, and `client` is
    /// `admin`.
    pub identities: Option<Identities>,
    /// `FX_STREAM_REPLICAS` of every service.
    replicas: usize,
    /// `FX_PARTITIONS`/`FX_PARTITION` of every service: one instance each, all of one partition.
    partitioning: events::Partitioning,
}

impl System {
    /// All three services with default configs, the venue flat at 1400 KRW/USD.
    pub async fn start() -> System {
        System::start_with(krw::KrwConfig::default(), trade::TradeConfig::default()).await
    }

    /// All three services with the given configs.
    pub async fn start_with(
        krw_config: krw::KrwConfig,
        trade_config: trade::TradeConfig,
    ) -> System {
        System::start_inner(krw_config, trade_config, None).await
    }

    /// All three services on a broker with `config/nats.conf`, each under its own identity;
    /// the fixture's `client` is `admin`.
    pub async fn start_secured() -> System {
        System::start_secured_with(krw::KrwConfig::default(), trade::TradeConfig::default()).await
    }

    /// [`System::start_secured`] with the given configs.
    pub async fn start_secured_with(
        krw_config: krw::KrwConfig,
        trade_config: trade::TradeConfig,
    ) -> System {
        System::start_inner(krw_config, trade_config, Some(Identities::random())).await
    }

    /// All three services with default configs on a running cluster (no auth), their
    /// streams with `replicas` replicas (`FX_STREAM_REPLICAS`).
    pub async fn start_on(cluster: NatsCluster, replicas: usize) -> System {
        let client = async_nats::connect(cluster.url_list().as_slice())
            .await
            .unwrap();
        System::start_broker(
            Broker::Cluster(cluster),
            client,
            replicas,
            krw::KrwConfig::default(),
            trade::TradeConfig::default(),
            None,
            events::Partitioning::SINGLE,
        )
        .await
    }

    /// One instance of each service, all of partition `partitioning.index()` of
    /// `partitioning.count()`, on a broker with `config/nats.conf` (only that partition's users
    /// can exchange).
    pub async fn start_secured_partition(partitioning: events::Partitioning) -> System {
        System::start_inner_partition(
            krw::KrwConfig::default(),
            trade::TradeConfig::default(),
            Some(Identities::random()),
            partitioning,
        )
        .await
    }

    async fn start_inner(
        krw_config: krw::KrwConfig,
        trade_config: trade::TradeConfig,
        identities: Option<Identities>,
    ) -> System {
        System::start_inner_partition(
            krw_config,
            trade_config,
            identities,
            events::Partitioning::SINGLE,
        )
        .await
    }

    async fn start_inner_partition(
        krw_config: krw::KrwConfig,
        trade_config: trade::TradeConfig,
        identities: Option<Identities>,
        partitioning: events::Partitioning,
    ) -> System {
        let (nats, client) = match &identities {
            None => {
                let nats = NatsServer::start();
                let client = async_nats::connect(nats.url()).await.unwrap();
                (nats, client)
            }
            Some(ids) => {
                let nats = ids.broker();
                let client = ids.connect(&nats.url(), "admin").await;
                (nats, client)
            }
        };
        System::start_broker(
            Broker::Single(nats),
            client,
            1,
            krw_config,
            trade_config,
            identities,
            partitioning,
        )
        .await
    }

    async fn start_broker(
        nats: Broker,
        client: async_nats::Client,
        replicas: usize,
        krw_config: krw::KrwConfig,
        trade_config: trade::TradeConfig,
        identities: Option<Identities>,
        partitioning: events::Partitioning,
    ) -> System {
        let js = runtime::broker::jetstream(client.clone());
        let mut sys = System {
            nats,
            client,
            js,
            dir: tempfile::tempdir().unwrap(),
            offsets: HashMap::new(),
            stores: HashMap::new(),
            running: HashMap::new(),
            krw_config,
            trade_config,
            usd_config: usd::UsdConfig::default(),
            venue: Arc::new(trade::SimulatedVenue::flat(
                Rate::new(rust_decimal::Decimal::from(1400)).unwrap(),
            )),
            trade_service: None,
            identities,
            replicas,
            partitioning,
        };
        for name in ["krw", "trade", "usd"] {
            sys.offsets.insert(name, Arc::new(AtomicU64::new(0)));
        }
        sys.start_service("usd").await;
        sys.start_service("trade").await;
        sys.start_service("krw").await;
        sys
    }

    fn config(&self, name: &str) -> RuntimeConfig {
        let mut config = RuntimeConfig::for_test(&self.nats.url(), self.dir.path().join(name))
            .with_partitioning(self.partitioning);
        config.streams.replicas = self.replicas;
        if let Some(ids) = &self.identities {
            config.nats = ids.nats_config(&self.nats.url(), name);
        }
        config
    }

    /// Connects as one identity of `config/nats.conf` (secured systems only).
    pub async fn connect_as(&self, who: &str) -> async_nats::Client {
        self.identities
            .as_ref()
            .expect("a secured system (System::start_secured)")
            .connect(&self.nats.url(), who)
            .await
    }

    fn clock(&self, name: &str) -> Clock {
        let offset = self.offsets[name].clone();
        let wall = runtime::system_clock();
        Arc::new(move || wall() + offset.load(Ordering::SeqCst))
    }

    /// Moves one service's clock forward by `ms`.
    pub fn advance(&self, name: &str, ms: u64) {
        self.offsets[name].fetch_add(ms, Ordering::SeqCst);
    }

    /// Starts (or restarts) one service on its store.
    pub async fn start_service(&mut self, name: &'static str) {
        assert!(!self.running.contains_key(name), "{name} already runs");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let config = self.config(name);
        let clock = self.clock(name);
        let task = match name {
            "krw" => {
                let rt = Runtime::start(krw::KrwService::new(self.krw_config.clone()), config)
                    .await
                    .unwrap()
                    .with_clock(clock);
                self.stores.insert(name, rt.store());
                tokio::spawn(krw::server::serve(rt, 20, shutdown))
            }
            "trade" => {
                let svc = trade::TradeService::new(self.trade_config.clone(), self.venue.clone());
                let rt = Runtime::start(svc, config).await.unwrap().with_clock(clock);
                self.stores.insert(name, rt.store());
                self.trade_service = Some(rt.participant());
                tokio::spawn(trade::server::serve(rt, shutdown))
            }
            "usd" => {
                let rt = Runtime::start(usd::UsdService::new(self.usd_config.clone()), config)
                    .await
                    .unwrap()
                    .with_clock(clock);
                self.stores.insert(name, rt.store());
                tokio::spawn(usd::server::serve(rt, self.usd_config.clone(), shutdown))
            }
            other => panic!("no service {other}"),
        };
        self.running.insert(name, Running { stop, task });
        // Ready once its admin endpoint answers (krw/usd) or its consumer exists (trade).
        let client = self.client.clone();
        let js = self.js.clone();
        let part = self.partitioning;
        testkit::wait_for(&format!("fx-{name} to be ready"), 20_000, || {
            let (client, js) = (client.clone(), js.clone());
            async move {
                let ok = match name {
                    "trade" => js
                        .get_stream("FX")
                        .await
                        .ok()?
                        .get_consumer::<jetstream::consumer::pull::Config>(&format!(
                            "fx-{}",
                            part.instance_name("trade")
                        ))
                        .await
                        .is_ok(),
                    _ => runtime::admin::request_to(
                        &client,
                        name,
                        part,
                        "audit",
                        "test",
                        &serde_json::json!({}),
                    )
                    .await
                    .is_ok(),
                };
                ok.then_some(())
            }
        })
        .await;
    }

    /// Stops one service gracefully and waits until it has.
    pub async fn stop_service(&mut self, name: &'static str) {
        let r = self.running.remove(name).expect("service runs");
        self.stores.remove(name);
        if name == "trade" {
            self.trade_service = None;
        }
        let _ = r.stop.send(());
        r.task.await.unwrap().expect("clean stop");
    }

    /// The store of a running service (read-only use: journals, records).
    pub fn store(&self, name: &str) -> Arc<Store> {
        self.stores[name].clone()
    }

    /// The running fx-trade participant (breaker state).
    pub fn trade(&self) -> Arc<trade::TradeService> {
        self.trade_service.clone().expect("fx-trade runs")
    }

    /// Deposits KRW through fx-krw's admin endpoint.
    pub async fn deposit_krw(&self, user: &str, krw: &str) {
        fxctl::deposit(
            &self.client,
            &uid(user),
            Some(Krw::parse(krw).unwrap()),
            None,
            "test",
        )
        .await
        .unwrap();
    }

    /// Publishes a request and follows it to its end.
    pub async fn exchange(&self, user: &str, krw: &str, min_usd: Option<&str>) -> fxctl::Outcome {
        self.exchange_saga(user, krw, min_usd, SagaId::new_v7())
            .await
    }

    /// Same, with a chosen saga id.
    pub async fn exchange_saga(
        &self,
        user: &str,
        krw: &str,
        min_usd: Option<&str>,
        saga: SagaId,
    ) -> fxctl::Outcome {
        let out = fxctl::exchange(
            &self.client,
            uid(user),
            Krw::parse(krw).unwrap(),
            min_usd.map(|m| Usd::parse(m).unwrap()),
            Some(saga),
            Some(SAGA_DEADLINE_MS),
        )
        .await
        .unwrap();
        out.outcome.expect("waited")
    }

    /// A user's balances through the admin endpoints.
    pub async fn balance(&self, user: &str) -> fxctl::Balance {
        fxctl::balance(&self.client, &uid(user), "test")
            .await
            .unwrap()
    }

    /// Both audits; panics with the failures unless every invariant holds.
    pub async fn assert_audit_ok(&self) {
        let a = fxctl::audit(&self.client, "test").await.unwrap();
        assert_eq!(a["ok"], serde_json::json!(true), "audit failed: {a:#}");
    }

    /// Journal operations of one saga in one service, sorted.
    pub fn journal_ops(&self, service: &str, saga: SagaId) -> Vec<String> {
        let mut ops: Vec<String> = self
            .store(service)
            .journal_entries()
            .unwrap()
            .into_iter()
            .filter(|e: &JournalEntry| e.saga_id == saga)
            .map(|e| e.op.to_string())
            .collect();
        ops.sort();
        ops
    }

    /// Waits until the stream holds an event of `kind` for `saga`; returns the kinds of the
    /// saga's events seen by then, as `domain.event`, in stream order.
    pub async fn wait_for_event(&self, saga: SagaId, kind: events::EventKind) -> Vec<String> {
        testkit::wait_for(&format!("{kind} of saga {saga}"), 20_000, || async {
            let kinds: Vec<events::EventKind> = self
                .saga_events(saga)
                .await
                .iter()
                .map(Event::kind)
                .collect();
            kinds
                .contains(&kind)
                .then(|| kinds.iter().map(|k| k.type_name()).collect())
        })
        .await
    }

    /// Every decoded event of one saga on the stream, in stream order.
    pub async fn saga_events(&self, saga: SagaId) -> Vec<Event> {
        testkit::stream_messages(&self.js, "FX")
            .await
            .into_iter()
            .filter_map(|m| Event::decode(m.subject.as_str(), &m.payload).ok())
            .filter(|e| e.saga_id() == saga)
            .collect()
    }
}

/// Asserts the broker logged no permission violation (every grant the run needed exists).
pub fn assert_no_violation(sys: &System) {
    let violations: Vec<String> = sys
        .nats
        .log()
        .into_iter()
        .filter(|l| l.contains("Violation"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}

// --- Sagas on a cluster, where a publish can fail during a leader election -----------------

/// How long one attempt waits for a saga's answers before looking at the stream.
const ATTEMPT_WAIT_MS: u64 = 8_000;
/// How long one saga may take in all, retries included.
const SAGA_BUDGET_MS: u64 = 45_000;

/// What the stream says about one saga.
pub enum OnStream {
    /// Its request is not (yet, or not readably) on the stream.
    Absent,
    /// Requested, not ended yet.
    Running,
    Ended(fxctl::Outcome),
}

/// Reads the saga's events from `FX`, tolerating errors while a leader is being elected.
pub async fn on_stream(js: &jetstream::Context, saga: SagaId) -> OnStream {
    let Ok(mut stream) = js.get_stream("FX").await else {
        return OnStream::Absent;
    };
    let Ok(info) = stream.info().await.map(|i| i.state.clone()) else {
        return OnStream::Absent;
    };
    let mut follower = fxctl::SagaFollower::default();
    let mut seen = false;
    for seq in info.first_sequence.max(1)..=info.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            return if seen {
                OnStream::Running
            } else {
                OnStream::Absent
            };
        };
        let Ok(e) = Event::decode(m.subject.as_str(), &m.payload) else {
            continue;
        };
        if e.saga_id() != saga {
            continue;
        }
        seen = true;
        if let Some(o) = follower.push(&e) {
            return OnStream::Ended(o);
        }
    }
    if seen {
        OnStream::Running
    } else {
        OnStream::Absent
    }
}

/// Runs one exchange to its end as a user would: publish and follow; if the publish fails
/// (no PubAck while `FX` elects a leader) or the answers are missed (this client was on the
/// killed node), look at the stream, and publish again with the same saga id when the request
/// is not there. Returns the outcome and whether the first attempt answered it.
pub async fn run_saga(
    client: &async_nats::Client,
    js: &jetstream::Context,
    user: &str,
    saga: SagaId,
    krw: u64,
) -> (fxctl::Outcome, bool) {
    let start = Instant::now();
    let krw = Krw::parse(&krw.to_string()).unwrap();
    for attempt in 1.. {
        assert!(
            start.elapsed() < Duration::from_millis(SAGA_BUDGET_MS),
            "saga {saga} of {user} did not end within {SAGA_BUDGET_MS} ms"
        );
        let err = match fxctl::exchange(
            client,
            uid(user),
            krw,
            None,
            Some(saga),
            Some(ATTEMPT_WAIT_MS),
        )
        .await
        {
            Ok(e) => return (e.outcome.expect("waited"), attempt == 1),
            Err(e) => e,
        };
        match on_stream(js, saga).await {
            OnStream::Ended(o) => return (o, false),
            OnStream::Absent => {
                eprintln!(
                    "saga {saga} of {user}: attempt {attempt} failed ({err}); publishing again"
                );
            }
            OnStream::Running => {
                eprintln!("saga {saga} of {user}: attempt {attempt} failed ({err}); following it on the stream");
                let o = wait_for(&format!("saga {saga} to end"), SAGA_BUDGET_MS, || async {
                    match on_stream(js, saga).await {
                        OnStream::Ended(o) => Some(o),
                        _ => None,
                    }
                })
                .await;
                return (o, false);
            }
        }
    }
    unreachable!()
}

pub fn usd(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A user id from a literal.
pub fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// The balance a test expects, as strings at currency scale.
pub fn balance(user: &str, krw_available: &str, krw_held: &str, usd: &str) -> fxctl::Balance {
    fxctl::Balance {
        user_id: user.into(),
        krw_available: krw_available.into(),
        krw_held: krw_held.into(),
        usd: usd.into(),
        usd_frozen: false,
    }
}
