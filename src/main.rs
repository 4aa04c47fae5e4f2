//! The `tidings` command: run the pipeline (all in one process, or one role
//! per process), set it up, and talk to it as a client.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and every processor in one process. With the default
    /// configuration nothing else is needed: Kafka is librdkafka's embedded
    /// mock cluster, the store is a SQLite file and providers print to the log.
    Dev {
        /// Do not create the demo user and its welcome notification.
        #[arg(long)]
        no_demo: bool,
    },
    /// Run the gRPC/HTTP gateway.
    Gateway,
    /// Run processor stages: enricher, scheduler, sender-ios, sender-android,
    /// sender-sms, sender-email, retry-1, retry-2, retry-3, template-stats,
    /// feed-planner, feed-writer, or all.
    Process {
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
    },
    /// Print the effective configuration as TOML.
    Config,
    /// Load-test the whole pipeline in this process through the batch send
    /// API, against a local Twilio-compatible server, and print
    /// notifications/s and accept-to-provider latency.
    Bench(tidings::bench::BenchOptions),
    /// Load-test the news feed in this process through the gRPC API: build a
    /// social graph, publish posts and measure fan-out, then read feeds and
    /// measure pages/s and latency.
    BenchFeed(tidings::bench_feed::FeedBenchOptions),
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
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long)]
        locale: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Register a device token for a user (client).
    Device {
        user: String,
        /// ios, android or web.
        platform: String,
        token: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Send a notification (client).
    Send {
        /// Target users.
        #[arg(long = "user", required = true)]
        users: Vec<String>,
        /// Channels (ios, android, sms, email); none means every opted-in one.
        #[arg(long = "channel")]
        channels: Vec<String>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        body: Option<String>,
        #[arg(long)]
        template: Option<String>,
        /// Template parameter as key=value; repeatable.
        #[arg(long = "param")]
        params: Vec<String>,
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
        notification_id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Print a bearer token for a user of the feed API (signed with
    /// feed.user_token_secret; your auth service mints these in production).
    UserToken {
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
        #[arg(
            long,
            env = "TIDINGS_GATEWAY_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        gateway: String,
        #[command(subcommand)]
        command: FeedCommand,
    },
}

#[derive(Subcommand)]
enum FeedCommand {
    /// Publish a post to your followers.
    Post {
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
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The cursor a previous page printed.
        #[arg(long, default_value = "")]
        cursor: String,
    },
    Follow {
        user: String,
    },
    Unfollow {
        user: String,
    },
    Mute {
        user: String,
    },
    Unmute {
        user: String,
    },
}

#[derive(Subcommand)]
enum AppsCommand {
    /// Create an app and print its key and secret (shown once).
    Create {
        name: String,
        /// Comma-separated: send, status, contacts, preferences, templates, or *.
        #[arg(long, default_value = "*", value_delimiter = ',')]
        permissions: Vec<String>,
        /// Requests per second allowed per gateway instance.
        #[arg(long)]
        quota: Option<u32>,
    },
    /// Revoke an app key.
    Revoke { app_key: String },
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
    /// Defaults to the app `tidings dev` creates.
    #[arg(long, env = "TIDINGS_APP_KEY", default_value = tidings::runtime::DEV_APP_KEY)]
    app_key: String,
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
            tidings::runtime::spawn_metrics(
                runtime.config.telemetry.metrics_addr,
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
        Command::Migrate { status } => {
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
            }
            Ok(())
        }
        Command::Bench(options) => tidings::bench::run(bench_config(load()?), options).await,
        Command::BenchFeed(options) => {
            tidings::bench_feed::run(bench_config(load()?), options).await
        }
        Command::Config => {
            let config = load()?;
            print!("{}", toml_of(&config)?);
            Ok(())
        }
        Command::Dlq { command } => tidings::dlq::run(&load()?, command).await,
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
                    println!(
                        "app_key    = {key}\napp_secret = {secret}\n(the secret is shown once; store it now)"
                    );
                }
                AppsCommand::Revoke { app_key } => {
                    if store.apps.revoke(&app_key).await? {
                        println!("revoked {app_key}");
                    } else {
                        anyhow::bail!("no app `{app_key}`");
                    }
                }
                AppsCommand::List => {
                    for app in store.apps.list().await? {
                        let state = if app.revoked { "revoked" } else { "active" };
                        println!(
                            "{:<40} {:<20} {:<8} {}",
                            app.app_key,
                            app.name,
                            state,
                            app.permissions.join(",")
                        );
                    }
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
            println!("user {id} saved");
            Ok(())
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
            println!("device registered for {user}");
            Ok(())
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
            println!("accepted event {}", response.event_id);
            for id in response.notification_ids {
                println!("  notification {id}");
            }
            Ok(())
        }
        Command::Status {
            notification_id,
            gateway,
        } => {
            let client = gateway.connect().await?;
            let status = client.status(&notification_id).await?;
            for d in status.deliveries {
                println!(
                    "{:<8} {:<24} {:<10} attempt {} {}",
                    d.channel, d.target, d.state, d.attempt, d.detail
                );
            }
            Ok(())
        }
        Command::UserToken { user, ttl } => {
            println!("{}", user_token(&load()?, &user, ttl));
            Ok(())
        }
        Command::Feed {
            user,
            gateway,
            command,
        } => feed_command(&load()?, &user, &gateway, command).await,
    }
}

/// The configuration a benchmark runs with: quiet logs, and on the embedded
/// default a fresh store of its own.
fn bench_config(mut config: Config) -> Config {
    // The bench measures the pipeline, not the terminal: keep logs quiet.
    config.telemetry.log = "warn".into();
    tidings_telemetry::init_logging(&config.telemetry);
    if config.kafka.is_embedded() && config.store.url == tidings_config::StoreConfig::default().url
    {
        let dir = std::env::temp_dir().join(format!("tidings-bench-{}", std::process::id()));
        config.store.url = format!("sqlite://{}/tidings.db", dir.display());
    }
    config
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

async fn feed_command(
    config: &Config,
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
            println!("posted {}", post.post_id);
        }
        FeedCommand::Read { limit, cursor } => {
            let page = feed.page(&cursor, limit).await.map_err(status)?;
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
        FeedCommand::Follow { user: other } => feed.follow(&other, true).await.map_err(status)?,
        FeedCommand::Unfollow { user: other } => {
            feed.follow(&other, false).await.map_err(status)?
        }
        FeedCommand::Mute { user: other } => feed.mute(&other, true).await.map_err(status)?,
        FeedCommand::Unmute { user: other } => feed.mute(&other, false).await.map_err(status)?,
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
