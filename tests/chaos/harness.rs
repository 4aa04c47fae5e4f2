//! Sets up one chaos run (a configuration of its own, topics, keyspace, app,
//! users, processes, provider stand-in), and counts each experiment:
//! accepted, delivered, lost, duplicates, recovery, exits, peak RSS.

use std::{
    collections::{BTreeMap, HashMap},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tidings::client::Client;
use tidings_kafka::Topics;
use tidings_schemas::{Channel, proto::v1 as pb};

use crate::{
    cluster::{Cluster, Exit},
    ledger::{Lag, Outcomes},
    load::{Load, lock},
    provider::{ChaosProvider, MAX_IN_FLIGHT, text_of},
};

/// The bar every experiment is held to.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// How long recovery is waited for before it is written down as failed.
const RECOVERY_WAIT: Duration = Duration::from_secs(90);
/// How long the pipeline may take to finish its work after the load stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(150);
/// Peak resident memory any one process may reach (debug build).
pub const RSS_LIMIT_MIB: u64 = 512;

/// The roles of a run: the gateway and the stages, a process each for the
/// notification path, one process for the rest.
pub const STAGE_ROLES: &[(&str, &[&str])] = &[
    ("enricher", &["enricher"]),
    ("sender-sms", &["sender-sms"]),
    ("retry-1", &["retry-1"]),
    ("retry-2", &["retry-2"]),
    ("retry-3", &["retry-3"]),
    ("scheduler", &["scheduler"]),
    (
        "others",
        &[
            "template-stats",
            "feed-planner",
            "feed-writer",
            "feed-tally",
            "feed-pruner",
            "feed-follows",
            "sender-ios",
            "sender-android",
            "sender-email",
            "sender-web",
            "sender-in-app",
        ],
    ),
];

pub struct Harness {
    pub run: String,
    pub dir: PathBuf,
    pub bootstrap: String,
    /// Topic and group prefix of this run (`chaos<id>`).
    pub prefix: String,
    /// The run's Cassandra keyspace (`chaos_<id>`).
    pub keyspace: String,
    /// The gateway's HTTP side (feed API, webhooks).
    pub http: SocketAddr,
    pub topics: Topics,
    pub cluster: Arc<Mutex<Cluster>>,
    monitor: tokio::task::JoinHandle<()>,
    pub provider: ChaosProvider,
    pub load: Load,
    pub client: Arc<Client>,
    users: Arc<Vec<String>>,
    pub outcomes: Outcomes,
    lags: Vec<Lag>,
    pub rate: f64,
}

/// One experiment in progress.
pub struct Experiment {
    pub name: String,
    pub what: String,
    first_seq: u64,
    pub faults: Vec<Fault>,
    /// Sender processes killed: each may re-send up to `MAX_IN_FLIGHT`.
    pub sender_crashes: u64,
    pub notes: Vec<String>,
    /// Poison records: (topic, partition, offset, what, notification id).
    pub poison: Vec<Poison>,
    /// Peak RSS bounds (MiB) by role where an experiment sets its own
    /// (the hostile load's gateway); [`RSS_LIMIT_MIB`] for the others.
    pub rss_limits: BTreeMap<String, u64>,
    /// What an experiment found wrong on its own (e.g. a refused call
    /// answered with the wrong status).
    pub failures: Vec<String>,
}

pub struct Poison {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub what: String,
    pub notification_id: Option<String>,
}

pub struct Fault {
    pub what: String,
    pub recovery: Option<Duration>,
}

/// The counts of one experiment, and what broke the bar.
pub struct Stats {
    pub name: String,
    pub what: String,
    pub accepted: usize,
    pub refused: HashMap<String, u64>,
    pub delivered: usize,
    pub dead_lettered: usize,
    pub other_terminal: usize,
    pub lost: Vec<u64>,
    pub duplicates: usize,
    pub allowed_duplicates: u64,
    pub unacked_delivered: usize,
    pub faults: Vec<Fault>,
    pub exits: Vec<Exit>,
    pub peak_rss_mib: BTreeMap<String, u64>,
    pub rss_limits: BTreeMap<String, u64>,
    pub drained: Option<Duration>,
    pub poison: Option<(usize, usize)>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Harness {
    pub async fn start(rate: f64) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let run = id[..8].to_owned();
        let prefix = format!("chaos{id}");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{run}"));
        std::fs::create_dir_all(&dir).expect("run directory");
        let provider = ChaosProvider::start(&run).await;
        let (grpc, http) = (free_port(), free_port());
        let bootstrap = crate::support::kafka_address();
        let config = format!(
            "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic_prefix = \"{prefix}\"\n\
             group_prefix = \"{prefix}\"\npartitions = 3\n\n\
             [store]\nurl = \"scylla://{cql}/chaos_{id}\"\n\n\
             [gateway]\ngrpc_addr = \"127.0.0.1:{grpc}\"\nhttp_addr = \"127.0.0.1:{http}\"\n\n\
             [enricher]\nschedule_poll_ms = 500\n\n\
             [senders]\n# Short tiers, many attempts: a provider outage of the suite\n\
             # must end in deliveries, not in attempts used up.\n\
             retry_delays_ms = [1000, 5000, 10000]\nmax_attempts = 30\n\n\
             [tracking]\nlink_secret = \"chaos-link-secret\"\n\n\
             [feed]\nuser_token_secret = \"chaos-user-token-secret\"\n\n\
             [telemetry]\nlog = \"info\"\n\n{}",
            provider.config_toml(),
            cql = crate::support::cql_address(),
        );
        let config_path = dir.join("tidings.toml");
        std::fs::write(&config_path, config).expect("write config");
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_tidings"));
        let mut cluster = Cluster::new(&binary, &config_path, &dir);
        say(&format!(
            "chaos run {run}: topics {prefix}.*, keyspace chaos_{id}, logs in {}",
            dir.display()
        ));
        cluster
            .run(&["init"], Duration::from_secs(240))
            .unwrap_or_else(|e| panic!("{e}\n(run `scripts/servers.sh up`)"));
        let out = cluster
            .run(&["apps", "create", "chaos"], Duration::from_secs(60))
            .expect("apps create");
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().trim_start_matches('=').trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in: {out}"))
        };
        let (key, secret) = (field("app_key"), field("app_secret"));
        cluster.spawn("gateway", &["gateway"]);
        for (role, stages) in STAGE_ROLES {
            let mut args = vec!["process"];
            args.extend_from_slice(stages);
            cluster.spawn(role, &args);
        }
        let cluster = Arc::new(Mutex::new(cluster));
        let monitor = {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    lock(&cluster).check();
                }
            })
        };
        let endpoint = format!("http://127.0.0.1:{grpc}");
        let started = Instant::now();
        let client = loop {
            match Client::connect(&endpoint, Some(key.clone()), Some(secret.clone())).await {
                Ok(c) => break c,
                Err(e) if started.elapsed() > Duration::from_secs(90) => {
                    panic!("the gateway did not answer in 90 s: {e:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let users: Vec<String> = (0..100).map(|i| format!("chaos-{run}-u{i}")).collect();
        for (i, user) in users.iter().enumerate() {
            client
                .upsert_user(pb::UpsertUserRequest {
                    user_id: user.clone(),
                    phone: format!("+1555{:07}", i),
                    ..Default::default()
                })
                .await
                .expect("create user");
        }
        let topics = Topics::new(&prefix);
        let group = |stage: &str| format!("{prefix}.{stage}");
        let mut lags = vec![
            Lag::new(
                &bootstrap,
                &group("enricher"),
                vec![topics.requests().to_owned()],
            ),
            Lag::new(
                &bootstrap,
                &group("sender.sms"),
                vec![topics.deliver(Channel::Sms).to_owned()],
            ),
        ];
        for tier in 0..tidings_kafka::RETRY_TIERS {
            lags.push(Lag::new(
                &bootstrap,
                &group(&format!("retry.{}", tier + 1)),
                vec![topics.retry(tier).to_owned()],
            ));
        }
        let outcomes = Outcomes::new(&bootstrap, topics.tracking(), topics.dead_letter());
        let mut harness = Self {
            run,
            dir,
            bootstrap,
            keyspace: format!("chaos_{id}"),
            prefix,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            topics,
            cluster,
            monitor,
            provider,
            load: Load::new(1),
            client: Arc::new(client),
            users: Arc::new(users),
            outcomes,
            lags,
            rate,
        };
        harness.warm_up().await;
        harness
    }

    /// One notification end to end (sequence number 0): every process on
    /// the path has joined its group before the clock starts.
    async fn warm_up(&mut self) {
        let started = Instant::now();
        self.client
            .send(pb::SendRequest {
                event_id: format!("chaos-{}-0", self.run),
                user_ids: vec![self.users[0].clone()],
                channels: vec![pb::Channel::Sms as i32],
                content: Some(pb::send_request::Content::Raw(pb::RawContent {
                    sms_text: text_of(&self.run, 0),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .expect("warm-up send");
        while self.provider.taken_in(0..1).is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the warm-up notification did not reach the provider in 120 s; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        say(&format!(
            "warmed up in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }

    pub fn kill9(&self, role: &str) {
        let mut c = lock(&self.cluster);
        let i = c.index(role);
        c.kill9(i);
    }

    pub fn restart(&self, role: &str) {
        let mut c = lock(&self.cluster);
        let i = c.index(role);
        c.restart(i);
    }

    /// Starts an experiment: fresh counters, and the load.
    pub fn begin(&mut self, name: &str, what: &str) -> Experiment {
        {
            let mut c = lock(&self.cluster);
            c.check();
            for exit in c.take_exits() {
                say(&format!(
                    "between experiments: {} exited: {}",
                    exit.role, exit.status
                ));
            }
            c.take_peak_rss();
        }
        self.load.take_refused();
        say(&format!("experiment {name}: {what}"));
        let first_seq = self.load.next_seq();
        self.load.start(
            self.client.clone(),
            self.run.clone(),
            self.users.clone(),
            self.rate,
        );
        Experiment {
            name: name.into(),
            what: what.into(),
            first_seq,
            faults: Vec::new(),
            sender_crashes: 0,
            notes: Vec::new(),
            poison: Vec::new(),
            rss_limits: BTreeMap::new(),
            failures: Vec::new(),
        }
    }

    /// Accepted notifications of `exp` (accepted before `before`, when
    /// given) in no terminal state yet. Reads the topics to their high
    /// watermarks first; `None` if Kafka did not answer.
    async fn pending(&mut self, exp: &Experiment, before: Option<Instant>) -> Option<Vec<u64>> {
        if let Err(e) = self.outcomes.refresh().await {
            say(&format!("(reading outcomes: {e}; trying again)"));
            return None;
        }
        let range = exp.first_seq..self.load.next_seq();
        let taken = self.provider.taken_in(range.clone());
        Some(
            self.load
                .accepted_in(range)
                .into_iter()
                .filter(|(_, (_, at))| before.is_none_or(|b| *at < b))
                .filter(|(seq, (id, _))| {
                    !taken.contains_key(seq) && !self.outcomes.terminal.contains_key(id)
                })
                .map(|(seq, _)| seq)
                .collect(),
        )
    }

    /// A fault ended now: waits until everything accepted before it is in
    /// a terminal state, and writes down how long that took.
    pub async fn recovered(&mut self, exp: &mut Experiment, what: &str) {
        let ended = Instant::now();
        let recovery = loop {
            if let Some(p) = self.pending(exp, Some(ended)).await
                && p.is_empty()
            {
                break Some(ended.elapsed());
            }
            if ended.elapsed() > RECOVERY_WAIT {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        say(&format!(
            "  {what}: recovered {}",
            recovery.map_or(format!("not in {RECOVERY_WAIT:?}"), |d| format!(
                "in {:.1} s",
                d.as_secs_f64()
            ))
        ));
        exp.faults.push(Fault {
            what: what.into(),
            recovery,
        });
    }

    /// Stops the load, waits until every accepted notification is terminal
    /// and every group has committed all it read (bounded), and counts.
    pub async fn finish(&mut self, exp: Experiment) -> Stats {
        self.load.stop().await;
        let stopped = Instant::now();
        let mut drained = None;
        while stopped.elapsed() < DRAIN_LIMIT {
            let pending = self.pending(&exp, None).await;
            let lag: Result<i64, String> = self
                .lags
                .iter()
                .map(Lag::uncommitted)
                .try_fold(0, |sum, l| l.map(|l| sum + l));
            let poison_left = exp
                .poison
                .iter()
                .filter(|p| !self.poison_handled(p))
                .count();
            if pending.is_some_and(|p| p.is_empty()) && lag == Ok(0) && poison_left == 0 {
                drained = Some(stopped.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = self.outcomes.refresh().await;
        let range = exp.first_seq..self.load.next_seq();
        let accepted = self.load.accepted_in(range.clone());
        let taken = self.provider.taken_in(range);
        let (refused, skipped) = self.load.take_refused();
        let (exits, peak_rss_mib) = {
            let mut c = lock(&self.cluster);
            c.check();
            (c.take_exits(), c.take_peak_rss())
        };
        let (mut delivered, mut dead_lettered, mut other_terminal, mut lost) = (0, 0, 0, vec![]);
        for (seq, (id, _)) in &accepted {
            if taken.contains_key(seq) {
                delivered += 1;
            } else {
                match self.outcomes.terminal.get(id) {
                    Some(t) if t.dead_lettered => dead_lettered += 1,
                    Some(_) => other_terminal += 1,
                    None => lost.push(*seq),
                }
            }
        }
        let duplicates = taken.values().map(|(n, _)| n - 1).sum();
        let unacked_delivered = taken.keys().filter(|s| !accepted.contains_key(s)).count();
        let handled = exp.poison.iter().filter(|p| self.poison_handled(p)).count();
        let mut notes = exp.notes;
        if skipped > 0 {
            notes.push(format!(
                "{skipped} load ticks skipped (64 calls outstanding)"
            ));
        }
        for p in exp.poison.iter().filter(|p| !self.poison_handled(p)) {
            notes.push(format!(
                "poison not dead-lettered: {} on {} [{}@{}]",
                p.what, p.topic, p.partition, p.offset
            ));
        }
        let reasons: BTreeMap<&str, usize> = accepted
            .values()
            .filter_map(|(id, _)| self.outcomes.terminal.get(id))
            .fold(BTreeMap::new(), |mut m, t| {
                *m.entry(t.reason.as_str()).or_default() += 1;
                m
            });
        for (reason, n) in reasons {
            notes.push(format!("{n} accepted ended as: {reason}"));
        }
        let mut stats = Stats {
            name: exp.name,
            what: exp.what,
            accepted: accepted.len(),
            refused,
            delivered,
            dead_lettered,
            other_terminal,
            lost,
            duplicates,
            allowed_duplicates: MAX_IN_FLIGHT * exp.sender_crashes,
            unacked_delivered,
            faults: exp.faults,
            exits,
            peak_rss_mib,
            rss_limits: exp.rss_limits,
            drained,
            poison: (!exp.poison.is_empty()).then_some((exp.poison.len(), handled)),
            notes,
            failures: Vec::new(),
        };
        stats.failures = stats.judge();
        stats.failures.extend(exp.failures);
        stats
    }

    /// A poison record is handled when it is in the dead-letter topic (by
    /// its source offset), or its notification ended with a reason.
    fn poison_handled(&self, p: &Poison) -> bool {
        self.outcomes
            .dead_letters
            .contains_key(&(p.topic.clone(), p.partition, p.offset))
            || p.notification_id
                .as_ref()
                .is_some_and(|id| self.outcomes.terminal.contains_key(id))
    }
}

impl Stats {
    /// The peak RSS bound of `role` in this experiment, MiB.
    pub fn rss_limit(&self, role: &str) -> u64 {
        self.rss_limits.get(role).copied().unwrap_or(RSS_LIMIT_MIB)
    }

    /// What broke the bar.
    fn judge(&self) -> Vec<String> {
        let mut f = Vec::new();
        if !self.lost.is_empty() {
            let some: Vec<String> = self.lost.iter().take(5).map(u64::to_string).collect();
            f.push(format!(
                "{} lost (e.g. seq {})",
                self.lost.len(),
                some.join(", ")
            ));
        }
        if self.duplicates as u64 > self.allowed_duplicates {
            f.push(format!(
                "{} duplicates at the provider, {} allowed",
                self.duplicates, self.allowed_duplicates
            ));
        }
        if self.dead_lettered > 0 {
            f.push(format!(
                "{} accepted notifications dead-lettered",
                self.dead_lettered
            ));
        }
        for e in &self.exits {
            f.push(format!(
                "{} exited ({}): {}",
                e.role, e.status, e.last_lines
            ));
        }
        for fault in &self.faults {
            match fault.recovery {
                Some(d) if d <= RECOVERY_LIMIT => {}
                Some(d) => f.push(format!(
                    "{}: recovered in {:.0} s",
                    fault.what,
                    d.as_secs_f64()
                )),
                None => f.push(format!(
                    "{}: not recovered in {RECOVERY_WAIT:?}",
                    fault.what
                )),
            }
        }
        if self.drained.is_none() {
            f.push(format!("not drained within {DRAIN_LIMIT:?}"));
        }
        for (role, mib) in &self.peak_rss_mib {
            let limit = self.rss_limit(role);
            if *mib > limit {
                f.push(format!("{role} peaked at {mib} MiB (bound {limit} MiB)"));
            }
        }
        if let Some((n, handled)) = self.poison
            && handled < n
        {
            f.push(format!(
                "{} of {n} poison records not dead-lettered",
                n - handled
            ));
        }
        if self.accepted == 0 {
            f.push("nothing accepted".into());
        }
        f
    }
}

impl Harness {
    /// Deletes what the run created on the shared servers: its topics,
    /// consumer groups and keyspace. Called when the run passed (a failed
    /// run leaves them for inspection); a step that fails is reported, not
    /// fatal.
    pub async fn cleanup(&self) {
        use rdkafka::{
            admin::{AdminClient, AdminOptions},
            client::DefaultClientContext,
            consumer::{BaseConsumer, Consumer},
        };
        lock(&self.cluster).kill_all();
        let config = {
            let mut c = rdkafka::ClientConfig::new();
            c.set("bootstrap.servers", &self.bootstrap);
            c
        };
        let ours = format!("{}.", self.prefix);
        let names = |all: Vec<String>| -> Vec<String> {
            all.into_iter().filter(|n| n.starts_with(&ours)).collect()
        };
        let topics = config
            .create::<BaseConsumer>()
            .and_then(|c| c.fetch_metadata(None, Duration::from_secs(10)))
            .map(|m| names(m.topics().iter().map(|t| t.name().to_owned()).collect()));
        let groups = config
            .create::<BaseConsumer>()
            .and_then(|c| c.fetch_group_list(None, Duration::from_secs(10)))
            .map(|l| names(l.groups().iter().map(|g| g.name().to_owned()).collect()));
        let mut done = Vec::new();
        match config.create::<AdminClient<DefaultClientContext>>() {
            Ok(admin) => {
                let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
                if let Ok(groups) = &groups {
                    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
                    match admin.delete_groups(&refs, &opts).await {
                        Ok(_) => done.push(format!("{} consumer groups", refs.len())),
                        Err(e) => say(&format!("cleanup: deleting groups failed: {e}")),
                    }
                }
                match &topics {
                    Ok(topics) => {
                        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                        match admin.delete_topics(&refs, &opts).await {
                            Ok(results) => {
                                let failed: Vec<String> = results
                                    .into_iter()
                                    .filter_map(|r| r.err())
                                    .map(|(t, e)| format!("{t}: {e}"))
                                    .collect();
                                if failed.is_empty() {
                                    done.push(format!("{} topics", refs.len()));
                                } else {
                                    say(&format!("cleanup: topics not deleted: {failed:?}"));
                                }
                            }
                            Err(e) => say(&format!("cleanup: deleting topics failed: {e}")),
                        }
                    }
                    Err(e) => say(&format!("cleanup: listing topics failed: {e}")),
                }
            }
            Err(e) => say(&format!("cleanup: no Kafka admin client: {e}")),
        }
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(crate::support::cql_address())
            .build()
            .await;
        match session {
            Ok(session) => {
                let drop = format!("DROP KEYSPACE IF EXISTS {}", self.keyspace);
                match session.query_unpaged(drop, ()).await {
                    Ok(_) => done.push(format!("keyspace {}", self.keyspace)),
                    Err(e) => say(&format!("cleanup: dropping {} failed: {e}", self.keyspace)),
                }
            }
            Err(e) => say(&format!("cleanup: no CQL session: {e}")),
        }
        say(&format!("cleanup: deleted {}", done.join(", ")));
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.monitor.abort();
        lock(&self.cluster).kill_all();
    }
}

/// Progress lines go straight to stderr: the test harness would hold
/// `eprintln!` back until the test ends.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "chaos: {line}");
}
