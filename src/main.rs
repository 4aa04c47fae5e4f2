//! The `tidings` command: run the pipeline (all in one process, or one role
//! per process), set it up, and talk to it as a client.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{Value, json};
use tidings::{
    client::{self, Client},
    runtime::{Pipeline, Runtime, StageName, require_shared_kafka},
};
use tidings_config::Config;
use tidings_schemas::proto::v1 as pb;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Notifications and news feeds on Kafka"
)]
struct Cli {
    /// Configuration file (default: ./tidings.toml when present).
    #[arg(long, short, global = true, env = "TIDINGS_CONFIG")]
    config: Option<PathBuf>,
    /// Output format: text for people, or json for scripts.
    ///
    /// With json, the client and admin commands print one JSON document
    /// (`dlq list`: one object per line), and `bench` its results as one
    /// JSON object (as with its `--json`); commands that run servers and the
    /// other benchmarks print text either way.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// What `--output` takes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

impl Output {
    /// Prints `value` as one line of JSON with `--output json`, else the text
    /// `text` makes.
    fn print(self, value: Value, text: impl FnOnce() -> String) -> Result<()> {
        match self {
            Output::Json => println!(
                "{}",
                serde_json::to_string(&value).context("rendering the output as JSON")?
            ),
            Output::Text => println!("{}", text()),
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and every processor in one process. With the default
    /// configuration nothing else is needed: Kafka is librdkafka's embedded
    /// mock cluster, the store is a SQLite file and providers print to the log.
    /// Kafka's records live in this process's memory; when the stages fall
    /// behind, writers wait for them (a send at most kafka.produce_timeout_ms,
    /// then UNAVAILABLE) rather than outrun what the mock cluster keeps.
    Dev {
        /// Do not create the demo user and its welcome notification.
        #[arg(long)]
        no_demo: bool,
    },
    /// Run the gRPC/HTTP gateway.
    Gateway,
    /// Run processor stages: enricher, scheduler, sender-ios, sender-android,
    /// sender-sms, sender-email, sender-web, sender-in-app, retry-1, retry-2,
    /// retry-3, template-stats, feed-planner, feed-writer, feed-tally,
    /// feed-pruner, feed-follows, or all.
    Process {
        /// The stages this process runs (each joins its stage's consumer
        /// group, so more processes share the partitions), or `all`.
        #[arg(required = true)]
        stages: Vec<String>,
    },
    /// Create the Kafka topics and the store's tables (idempotent).
    Init,
    /// Apply the store's pending schema migrations, as `init` does for the
    /// store (no Kafka needed), then print where the schema stands.
    Migrate {
        /// Print each migration's version, name, state (applied or pending)
        /// and when it was applied; change nothing.
        #[arg(long)]
        status: bool,
        /// After migrating, fill the CQL recipient copy again (profiles and
        /// preferences copied into each user's `devices` partition; newer
        /// values are never overwritten): for upgrades to schema 11 during
        /// which processes of an earlier release wrote contacts or
        /// preferences. Nothing to do on SQLite.
        #[arg(long, conflicts_with = "status")]
        refill_recipients: bool,
    },
    /// Print the effective configuration as TOML.
    Config,
    /// Load-test the whole pipeline in this process through the batch send
    /// API, against a local Twilio, FCM, APNs or SendGrid stand-in (or all
    /// four in the design's daily mix), and print notifications/s,
    /// accept-to-provider latency, CPU per notification and same-run
    /// baselines: a bare HTTP client to the same stand-in, raw Kafka, raw
    /// store inserts.
    Bench(tidings::bench::BenchOptions),
    /// Serve the bench's provider stand-ins (FCM with its OAuth token
    /// endpoint, APNs, Twilio, SendGrid) over TLS until interrupted, so tidings, a
    /// bare client and gorush can be measured against one server
    /// (scripts/bench-gorush.sh).
    #[command(hide = true)]
    BenchProvider(tidings::bench_providers::BenchProviderOptions),
    /// Load-test the news feed in this process through the gRPC API: build a
    /// social graph, publish posts and measure fan-out, then read feeds and
    /// measure pages/s and latency.
    BenchFeed(tidings::bench_feed::FeedBenchOptions),
    /// Load-test the in-app inbox in this process: in-app sends through
    /// gRPC until stored (and their arrival on open SSE streams), count and
    /// list latency at a fixed offered rate over HTTP, and the memory of
    /// idle SSE streams.
    BenchInbox(tidings::bench_inbox::InboxBenchOptions),
    /// Watch a running deployment from its processes' /metrics: consumer lag
    /// per stage and topic, deliveries and failures per channel, stage
    /// errors, retries and dead letters, provider outcomes, store calls.
    Top(tidings::top::TopOptions),
    /// Inspect dead-lettered records and send them back to the topics they
    /// came from (admin; needs a shared Kafka: the embedded one lives only
    /// inside `tidings dev`).
    Dlq {
        #[command(subcommand)]
        command: tidings::dlq::DlqCommand,
    },
    /// Manage the applications allowed to call the gateway (admin; talks to
    /// the store directly).
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Create or update a user's contact points (client).
    User {
        /// The user's id in your system.
        id: String,
        /// Display name (feed authors, email greetings).
        #[arg(long)]
        name: Option<String>,
        /// Email address (the email channel).
        #[arg(long)]
        email: Option<String>,
        /// Phone number in E.164, e.g. +14155550100 (the SMS channel).
        #[arg(long)]
        phone: Option<String>,
        /// BCP 47 locale choosing a template's variant, e.g. en, fr-FR.
        #[arg(long)]
        locale: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Register a device token for a user (client).
    Device {
        /// The user the device belongs to.
        user: String,
        /// ios, android or web.
        platform: String,
        /// The APNs device token, the FCM registration token, or for web the
        /// browser's push subscription as JSON (endpoint and keys).
        token: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Send a notification (client).
    Send {
        /// Target users.
        #[arg(long = "user", required = true)]
        users: Vec<String>,
        /// Channels (ios, android, sms, email, web); none means every opted-in one.
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Push title and email subject (raw content, with --body).
        #[arg(long)]
        title: Option<String>,
        /// The text: push body, SMS and email text (raw content; or use
        /// --template).
        #[arg(long)]
        body: Option<String>,
        /// Send a stored template's latest version instead of --title/--body.
        #[arg(long)]
        template: Option<String>,
        /// Template parameter as key=value; repeatable.
        #[arg(long = "param")]
        params: Vec<String>,
        /// The category users opt in or out of, e.g. marketing, security
        /// (enricher.critical_categories bypass opt-outs).
        #[arg(long)]
        category: Option<String>,
        /// Idempotency key; generated when absent.
        #[arg(long)]
        event_id: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Show a notification's delivery state (client).
    Status {
        /// A notification id that `send` printed.
        notification_id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Print a bearer token for a user of the feed API (signed with
    /// feed.user_token_secret; your auth service mints these in production).
    UserToken {
        /// The user the token acts for.
        user: String,
        /// Seconds the token is valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Use the news feed as one user (client; the user's token is minted
    /// with feed.user_token_secret).
    Feed {
        /// The acting user.
        #[arg(long = "as", value_name = "USER")]
        user: String,
        /// The gateway's gRPC address.
        #[arg(
            long,
            env = "TIDINGS_GATEWAY_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        gateway: String,
        #[command(subcommand)]
        command: FeedCommand,
    },
    /// Use the in-app inbox as one user (client; the user's token is minted
    /// with feed.user_token_secret): list, count, read, read-all, archive,
    /// seen.
    Inbox(tidings::inbox_cli::InboxArgs),
    /// Manage notification templates (client): put one template file,
    /// import a directory of them, print one, or its counts. The file format
    /// (TOML or JSON, one template per file) is in docs/cli.md.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// Print a shell completion script, e.g. `tidings completions bash >
    /// ~/.local/share/bash-completion/completions/tidings`, `tidings
    /// completions zsh > ~/.zfunc/_tidings`, `tidings completions fish >
    /// ~/.config/fish/completions/tidings.fish`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Create the next version of the template in a file (.toml or .json);
    /// prints its name and new version.
    Put {
        /// The template file.
        file: PathBuf,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Put every template file (*.toml, *.json) in a directory, in name
    /// order. Every file is read and checked before any is sent.
    Import {
        /// The directory of template files.
        dir: PathBuf,
        /// Read and check the files; send nothing (no gateway needed).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Print a template as a template file (TOML; JSON with --output json),
    /// ready to edit and `put` again.
    Get {
        /// The template's name.
        name: String,
        /// The version to print; 0: the latest.
        #[arg(long, default_value_t = 0)]
        version: u32,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Print a template's counts: sent, delivered, opened, clicked, and its
    /// in-app items read and archived.
    Stats {
        /// The template's name.
        name: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[derive(Subcommand)]
enum FeedCommand {
    /// Publish a post to your followers.
    Post {
        /// The post's text.
        body: String,
        /// A media URL (CDN); repeatable.
        #[arg(long = "media")]
        media_urls: Vec<String>,
        /// Only these followers see it; repeatable (default: every follower).
        #[arg(long = "to")]
        audience: Vec<String>,
    },
    /// Print a page of your feed, newest first.
    Read {
        /// Items per page.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The cursor a previous page printed.
        #[arg(long, default_value = "")]
        cursor: String,
    },
    /// Follow a user: their posts reach your feed from now on.
    Follow {
        /// The user to follow.
        user: String,
    },
    /// Stop following a user.
    Unfollow {
        /// The user to stop following.
        user: String,
    },
    /// Mute a user you follow: no "new post" pushes from them; their posts
    /// stay in your feed.
    Mute {
        /// The user to mute.
        user: String,
    },
    /// Unmute a user.
    Unmute {
        /// The user to unmute.
        user: String,
    },
}

#[derive(Subcommand)]
enum AppsCommand {
    /// Create an app and print its key and secret (shown once).
    Create {
        /// A name for the app (the calling service), shown by `apps list`.
        name: String,
        /// Comma-separated: send, status, contacts, preferences, templates, or *.
        #[arg(long, default_value = "*", value_delimiter = ',')]
        permissions: Vec<String>,
        /// Requests per second allowed per gateway instance.
        #[arg(long)]
        quota: Option<u32>,
    },
    /// Revoke an app key.
    Revoke {
        /// The key `apps create` printed.
        app_key: String,
    },
    /// List apps.
    List,
}

#[derive(clap::Args)]
struct GatewayArgs {
    /// The gateway's gRPC address.
    #[arg(
        long,
        env = "TIDINGS_GATEWAY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    gateway: String,
    /// The calling app's key (`tidings apps create`); defaults to the app
    /// `tidings dev` creates.
    #[arg(long, env = "TIDINGS_APP_KEY", default_value = tidings::runtime::DEV_APP_KEY)]
    app_key: String,
    /// The calling app's secret.
    #[arg(long, env = "TIDINGS_APP_SECRET", default_value = tidings::runtime::DEV_APP_SECRET)]
    app_secret: String,
}

impl GatewayArgs {
    async fn connect(self) -> Result<Client> {
        Client::connect(&self.gateway, Some(self.app_key), Some(self.app_secret)).await
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        // One line a person can act on: what failed, and why, outermost first.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let load = || Config::load(cli.config.as_deref());
    let output = cli.output;
    match cli.command {
        Command::Dev { no_demo } => {
            let config = load()?;
            tidings_telemetry::init_logging(&config.telemetry);
            let pipeline = Pipeline::start(config, true).await?;
            tidings::runtime::ensure_dev_app(&pipeline.runtime.store).await?;
            let grpc = pipeline.gateway.grpc;
            println!(
                "tidings dev is running: gRPC {grpc}, HTTP http://{} (metrics at /metrics). Ctrl-C stops it.",
                pipeline.gateway.http
            );
            if !no_demo {
                let endpoint = format!("http://{grpc}");
                demo(&endpoint).await?;
                feed_demo(&pipeline.runtime.config, &endpoint, pipeline.gateway.http).await?;
            }
            pipeline.run_until_signal().await
        }
        Command::Gateway => {
            let config = load()?;
            require_shared_kafka(&config, "gateway")?;
            tidings_telemetry::init_logging(&config.telemetry);
            let runtime = Runtime::connect(config, false).await?;
            let shutdown = CancellationToken::new();
            let mut tasks = JoinSet::new();
            runtime.spawn_gateway(&mut tasks, &shutdown).await?;
            tidings::runtime::run_until_signal(&mut tasks, &shutdown).await
        }
        Command::Process { stages } => {
            let config = load()?;
            require_shared_kafka(&config, "process")?;
            let names: Vec<StageName> = if stages.iter().any(|s| s == "all") {
                StageName::all()
            } else {
                stages
                    .iter()
                    .map(|s| s.parse().map_err(anyhow::Error::msg))
                    .collect::<Result<_>>()?
            };
            tidings_telemetry::init_logging(&config.telemetry);
            let runtime = Runtime::connect(config, false).await?;
            let shutdown = CancellationToken::new();
            let mut tasks = JoinSet::new();
            for name in names {
                runtime.spawn_stage(name, &mut tasks, &shutdown)?;
            }
            let readiness = runtime.readiness(&mut tasks, &shutdown)?;
            tidings::runtime::spawn_metrics(
                runtime.config.telemetry.metrics_addr,
                readiness,
                &mut tasks,
                &shutdown,
            )
            .await?;
            tidings::runtime::run_until_signal(&mut tasks, &shutdown).await
        }
        Command::Init => {
            let config = load()?;
            require_shared_kafka(&config, "init")?;
            tidings_telemetry::init_logging(&config.telemetry);
            Runtime::connect(config, true).await?;
            println!("topics and tables are ready");
            Ok(())
        }
        Command::Migrate {
            status,
            refill_recipients,
        } => {
            let config = load()?;
            tidings_telemetry::init_logging(&config.telemetry);
            if status {
                print!("{}", Runtime::store_schema_status(&config).await?);
            } else {
                let (applied, status) = Runtime::migrate_store(&config).await?;
                if applied.is_empty() {
                    println!("nothing to apply");
                } else {
                    println!("applied migrations {applied:?}");
                }
                print!("{status}");
                if refill_recipients {
                    Runtime::refill_recipients(&config).await?;
                    println!("recipient copy filled");
                }
            }
            Ok(())
        }
        Command::Bench(mut options) => {
            options.json |= output == Output::Json;
            let (config, _scratch) = bench_config(load()?)?;
            tidings::bench::run(config, options).await
        }
        Command::BenchProvider(options) => tidings::bench_providers::run_provider(options).await,
        Command::BenchFeed(options) => {
            let (config, _scratch) = bench_config(load()?)?;
            tidings::bench_feed::run(config, options).await
        }
        Command::BenchInbox(options) => match &options.hold_streams {
            // The bench's own child process, the client side of its idle
            // streams: it needs no configuration.
            Some(base) => tidings::bench_inbox::hold_streams(base).await,
            None => {
                let (config, _scratch) = bench_config(load()?)?;
                tidings::bench_inbox::run(config, options).await
            }
        },
        Command::Top(options) => tidings::top::run(&load()?, options).await,
        Command::Config => {
            let config = load()?;
            match output {
                Output::Json => output.print(
                    serde_json::to_value(&config).context("rendering the configuration")?,
                    String::new,
                )?,
                Output::Text => print!("{}", toml_of(&config)?),
            }
            Ok(())
        }
        Command::Dlq { mut command } => {
            if let (Output::Json, tidings::dlq::DlqCommand::List { json, .. }) =
                (output, &mut command)
            {
                *json = true;
            }
            tidings::dlq::run(&load()?, command).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tidings",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Templates { command } => templates_command(output, command).await,
        Command::Apps { command } => {
            let config = load()?;
            let store = Runtime::connect_store_only(&config).await?;
            match command {
                AppsCommand::Create {
                    name,
                    permissions,
                    quota,
                } => {
                    let (key, secret) =
                        tidings::runtime::create_app(&store, &name, permissions, quota).await?;
                    output.print(json!({"app_key": key, "app_secret": secret, "name": name}), || {
                        format!(
                            "app_key    = {key}\napp_secret = {secret}\n(the secret is shown once; store it now)"
                        )
                    })?;
                }
                AppsCommand::Revoke { app_key } => {
                    if store.apps.revoke(&app_key).await? {
                        output.print(json!({"app_key": app_key, "revoked": true}), || {
                            format!("revoked {app_key}")
                        })?;
                    } else {
                        anyhow::bail!("no app `{app_key}`");
                    }
                }
                AppsCommand::List => {
                    let apps = store.apps.list().await?;
                    let value = apps
                        .iter()
                        .map(|app| {
                            json!({
                                "app_key": app.app_key,
                                "name": app.name,
                                "permissions": app.permissions,
                                "quota_per_sec": app.quota_per_sec,
                                "revoked": app.revoked,
                                "created_at_ms": app.created_at,
                            })
                        })
                        .collect();
                    output.print(Value::Array(value), || {
                        apps.iter()
                            .map(|app| {
                                let state = if app.revoked { "revoked" } else { "active" };
                                format!(
                                    "{:<40} {:<20} {:<8} {}",
                                    app.app_key,
                                    app.name,
                                    state,
                                    app.permissions.join(",")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })?;
                }
            }
            Ok(())
        }
        Command::User {
            id,
            name,
            email,
            phone,
            locale,
            gateway,
        } => {
            let client = gateway.connect().await?;
            client
                .upsert_user(pb::UpsertUserRequest {
                    user_id: id.clone(),
                    display_name: name.unwrap_or_default(),
                    email: email.unwrap_or_default(),
                    phone: phone.unwrap_or_default(),
                    locale: locale.unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
            output.print(json!({"user_id": id, "saved": true}), || {
                format!("user {id} saved")
            })
        }
        Command::Device {
            user,
            platform,
            token,
            gateway,
        } => {
            let client = gateway.connect().await?;
            client
                .register_device(&user, client::parse_platform(&platform)?, &token)
                .await?;
            output.print(
                json!({"user_id": user, "platform": platform, "registered": true}),
                || format!("device registered for {user}"),
            )
        }
        Command::Send {
            users,
            channels,
            title,
            body,
            template,
            params,
            category,
            event_id,
            gateway,
        } => {
            let content = client::content(title, body, template, &params)?;
            let channels = channels
                .iter()
                .map(|c| client::parse_channel(c).map(|c| c as i32))
                .collect::<Result<_>>()?;
            let client = gateway.connect().await?;
            let response = client
                .send(pb::SendRequest {
                    event_id: event_id.unwrap_or_default(),
                    user_ids: users,
                    channels,
                    category: category.unwrap_or_default(),
                    content: Some(content),
                    ..Default::default()
                })
                .await?;
            output.print(
                json!({
                    "event_id": response.event_id,
                    "notification_ids": response.notification_ids,
                }),
                || {
                    let mut text = format!("accepted event {}", response.event_id);
                    for id in &response.notification_ids {
                        text.push_str(&format!("\n  notification {id}"));
                    }
                    text
                },
            )
        }
        Command::Status {
            notification_id,
            gateway,
        } => {
            let client = gateway.connect().await?;
            let status = client.status(&notification_id).await?;
            if output == Output::Json {
                return output.print(client::status_json(&status), String::new);
            }
            for d in status.deliveries {
                println!(
                    "{:<8} {:<24} {:<10} attempt {} {}",
                    d.channel, d.target, d.state, d.attempt, d.detail
                );
            }
            Ok(())
        }
        Command::UserToken { user, ttl } => {
            let token = user_token(&load()?, &user, ttl);
            output.print(
                json!({"user_id": user, "token": token, "ttl_secs": ttl}),
                || token.clone(),
            )
        }
        Command::Feed {
            user,
            gateway,
            command,
        } => feed_command(&load()?, output, &user, &gateway, command).await,
        Command::Inbox(args) => {
            let token = user_token(&load()?, &args.user, 600);
            tidings::inbox_cli::run(args, &token, output == Output::Json).await
        }
    }
}

/// The configuration a benchmark runs with: quiet logs, and on the embedded
/// default a fresh store of its own, in a directory removed when the
/// returned guard drops (a run writes hundreds of MiB).
fn bench_config(mut config: Config) -> Result<(Config, Option<tempfile::TempDir>)> {
    // The bench measures the pipeline, not the terminal: keep logs quiet.
    config.telemetry.log = "warn".into();
    tidings_telemetry::init_logging(&config.telemetry);
    let mut scratch = None;
    if config.kafka.is_embedded() && config.store.url == tidings_config::StoreConfig::default().url
    {
        let dir = tempfile::Builder::new()
            .prefix("tidings-bench-")
            .tempdir()
            .context("creating the bench's store directory")?;
        config.store.url = format!("sqlite://{}/tidings.db", dir.path().display());
        scratch = Some(dir);
    }
    Ok((config, scratch))
}

/// A user token for `user`, minted with the configured secret.
fn user_token(config: &Config, user: &str, ttl: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    tidings_gateway::user_token::UserTokens::new(&config.feed.user_token_secret).mint(
        user,
        now,
        std::time::Duration::from_secs(ttl),
    )
}

/// `tidings templates ...`.
async fn templates_command(output: Output, command: TemplatesCommand) -> Result<()> {
    use tidings::client::TemplateFile;
    match command {
        TemplatesCommand::Put { file, gateway } => {
            let template = TemplateFile::read(&file)?;
            let name = template.name.clone();
            let version = gateway.connect().await?.put_template(template).await?;
            output.print(json!({"name": name, "version": version}), || {
                format!("template {name} version {version}")
            })
        }
        TemplatesCommand::Import {
            dir,
            dry_run,
            gateway,
        } => {
            // Every file is read and checked first: a typo in the tenth file
            // does not leave nine imported and one not.
            let files = client::template_files(&dir)?;
            let templates = files
                .iter()
                .map(|f| TemplateFile::read(f))
                .collect::<Result<Vec<_>>>()?;
            let mut imported = Vec::new();
            if dry_run {
                for (file, t) in files.iter().zip(&templates) {
                    imported.push(json!({"file": file, "name": t.name, "version": null}));
                }
            } else {
                let client = gateway.connect().await?;
                let (bar, _) = tidings::progress::bar(
                    templates.len() as u64,
                    "{bar:40} {pos}/{len} templates imported [{elapsed}] {msg}",
                );
                for (file, template) in files.iter().zip(templates) {
                    let name = template.name.clone();
                    bar.set_message(name.clone());
                    let version = client.put_template(template).await.with_context(|| {
                        format!("importing {} (template {name})", file.display())
                    })?;
                    imported.push(json!({"file": file, "name": name, "version": version}));
                    bar.inc(1);
                }
                bar.finish_and_clear();
            }
            let text = || {
                let mut lines: Vec<String> = imported
                    .iter()
                    .map(|t| match t["version"].as_u64() {
                        Some(v) => {
                            format!("template {} version {v}", t["name"].as_str().unwrap_or(""))
                        }
                        None => format!(
                            "template {} ok ({})",
                            t["name"].as_str().unwrap_or(""),
                            t["file"].as_str().unwrap_or("")
                        ),
                    })
                    .collect();
                lines.push(format!(
                    "{} {} template(s) from {}",
                    if dry_run { "checked" } else { "imported" },
                    imported.len(),
                    dir.display()
                ));
                lines.join("\n")
            };
            let value = json!({"dry_run": dry_run, "templates": imported.clone()});
            output.print(value, text)
        }
        TemplatesCommand::Get {
            name,
            version,
            gateway,
        } => {
            let template = gateway
                .connect()
                .await?
                .get_template(&name, version)
                .await?;
            let file = TemplateFile::of(&template);
            match output {
                Output::Json => {
                    let mut value =
                        serde_json::to_value(&file).context("rendering the template")?;
                    value["version"] = template.version.into();
                    value["created_at_ms"] = template.created_at_ms.into();
                    output.print(value, String::new)
                }
                Output::Text => {
                    println!("# {name} version {}", template.version);
                    print!(
                        "{}",
                        toml::to_string_pretty(&file).context("rendering the template as TOML")?
                    );
                    Ok(())
                }
            }
        }
        TemplatesCommand::Stats { name, gateway } => {
            let stats = gateway.connect().await?.template_stats(&name).await?;
            output.print(
                json!({
                    "name": name,
                    "sent": stats.sent,
                    "delivered": stats.delivered,
                    "opened": stats.opened,
                    "clicked": stats.clicked,
                    "read": stats.read,
                    "archived": stats.archived,
                }),
                || {
                    format!(
                        "{name}: sent {}, delivered {}, opened {}, clicked {}, read {} and archived {} in the inbox",
                        stats.sent,
                        stats.delivered,
                        stats.opened,
                        stats.clicked,
                        stats.read,
                        stats.archived
                    )
                },
            )
        }
    }
}

async fn feed_command(
    config: &Config,
    output: Output,
    user: &str,
    gateway: &str,
    command: FeedCommand,
) -> Result<()> {
    let feed = client::FeedClient::connect(gateway, &user_token(config, user, 600)).await?;
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    match command {
        FeedCommand::Post {
            body,
            media_urls,
            audience,
        } => {
            let post = feed
                .publish_to(&body, media_urls, audience)
                .await
                .map_err(status)?;
            output.print(
                json!({"post_id": post.post_id, "created_at_ms": post.created_at_ms}),
                || format!("posted {}", post.post_id),
            )?;
        }
        FeedCommand::Read { limit, cursor } => {
            let page = feed.page(&cursor, limit).await.map_err(status)?;
            if output == Output::Json {
                return output.print(client::feed_page_json(&page), String::new);
            }
            for item in &page.items {
                let author = item
                    .author
                    .as_ref()
                    .map_or("?", |a| a.display_name.as_str());
                println!("{}  {:<20} {}", item.created_at_ms, author, item.body);
            }
            if page.items.is_empty() {
                println!("(nothing in this feed yet)");
            }
            if !page.next_cursor.is_empty() {
                println!("older: --cursor {}", page.next_cursor);
            }
        }
        FeedCommand::Follow { user: other } => {
            feed.follow(&other, true).await.map_err(status)?;
            output.print(json!({"user_id": other, "following": true}), || {
                format!("following {other}")
            })?;
        }
        FeedCommand::Unfollow { user: other } => {
            feed.follow(&other, false).await.map_err(status)?;
            output.print(json!({"user_id": other, "following": false}), || {
                format!("not following {other}")
            })?;
        }
        FeedCommand::Mute { user: other } => {
            feed.mute(&other, true).await.map_err(status)?;
            output.print(json!({"user_id": other, "muted": true}), || {
                format!("muted {other}")
            })?;
        }
        FeedCommand::Unmute { user: other } => {
            feed.mute(&other, false).await.map_err(status)?;
            output.print(json!({"user_id": other, "muted": false}), || {
                format!("unmuted {other}")
            })?;
        }
    }
    Ok(())
}

/// A client with the app `tidings dev` creates.
async fn dev_client(endpoint: &str) -> Result<Client> {
    Client::connect(
        endpoint,
        Some(tidings::runtime::DEV_APP_KEY.into()),
        Some(tidings::runtime::DEV_APP_SECRET.into()),
    )
    .await
}

/// A user with every kind of contact, and one notification to them, so the
/// log sink shows a delivery per channel right after start.
async fn demo(endpoint: &str) -> Result<()> {
    let client = dev_client(endpoint).await?;
    client
        .upsert_user(pb::UpsertUserRequest {
            user_id: "demo-user".into(),
            display_name: "Demo User".into(),
            locale: "en".into(),
            email: "demo@example.com".into(),
            phone: "+14155550100".into(),
            ..Default::default()
        })
        .await
        .context("creating the demo user")?;
    client
        .register_device(
            "demo-user",
            pb::Platform::Ios,
            &"0123456789abcdef".repeat(4),
        )
        .await?;
    client
        .register_device(
            "demo-user",
            pb::Platform::Android,
            "demo-fcm-registration-token-0123456789abcdef",
        )
        .await?;
    let response = client
        .send(pb::SendRequest {
            event_id: "demo-welcome".into(),
            user_ids: vec!["demo-user".into()],
            content: Some(client::content(
                Some("Welcome to tidings".into()),
                Some("Your pipeline works.".into()),
                None,
                &[],
            )?),
            ..Default::default()
        })
        .await?;
    println!(
        "demo: sent notification {} to demo-user on every channel; watch the `tidings::delivered` lines. \
         Try: tidings send --user demo-user --body hello",
        response.notification_ids.join(", ")
    );
    Ok(())
}

/// A friend of the demo user posts, so the demo user's feed has a story and
/// a "new post" push shows in the log.
async fn feed_demo(config: &Config, endpoint: &str, http: std::net::SocketAddr) -> Result<()> {
    let client = dev_client(endpoint).await?;
    client
        .upsert_user(pb::UpsertUserRequest {
            user_id: "demo-friend".into(),
            display_name: "Demo Friend".into(),
            ..Default::default()
        })
        .await
        .context("creating the demo friend")?;
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    client::FeedClient::connect(endpoint, &user_token(config, "demo-user", 600))
        .await?
        .follow("demo-friend", true)
        .await
        .map_err(status)?;
    let post = client::FeedClient::connect(endpoint, &user_token(config, "demo-friend", 600))
        .await?
        .publish("Hello from the news feed!", vec![])
        .await
        .map_err(status)?;
    println!(
        "demo: demo-friend posted {} to demo-user's feed. Read it with \
         `tidings feed --as demo-user read` or \
         `curl -H \"Authorization: Bearer $(tidings user-token demo-user)\" http://{http}/v1/me/feed`",
        post.post_id
    );
    Ok(())
}

fn toml_of(config: &Config) -> Result<String> {
    toml::to_string_pretty(config).context("rendering the configuration as TOML")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand, argument and flag says what it is in `--help`
    /// (issue 8 found `send --title` and `feed follow` without a word).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        walk(&command, "tidings", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
