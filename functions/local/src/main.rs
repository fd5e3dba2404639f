//! `gateway-local`: every route in one process with embedded storage, plus the key CLI.

mod batch_cli;
mod ingest_cli;
mod replay;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use gateway::backends::Backends;
use gateway::batch::BatchBackends;
use gateway::batch::worker::Worker;
use gateway::cache::memcached::MemcachedCacheStore;
use gateway::clock::{day_of, now_millis, now_secs};
use gateway::config::{Config, ServerConfig};
use gateway::ingest::backends::IngestBackends;
use gateway::keys::audit::{AUDIT_TABLE_ENV, AuditAction, AuditEntry, DynamoAuditLog};
use gateway::keys::edge::{
    ApiGatewayEdgeKeys, ProvisionError, ensure_admin_key, provision, revoke,
};
use gateway::keys::{
    ContextPolicy, DEFAULT_ROTATION_GRACE_SECS, KeyChange, NewKey, Role, Scope, rotate_key,
};
use gateway::pipeline::batch::PipelineRunner;
use gateway::responses::dynamo::RESPONSES_TABLE_ENV;
use gateway::routing::Model;
use gateway::state::Gateway;
use gateway::storage::dynamo::DynamoConfig;
use gateway::storage::embedded::EmbeddedStore;
use gateway::usage::dynamo::DynamoUsageStore;
use gateway::usage::{UsageQuery, UsageStore, to_csv, to_table};
use gateway::vectors::CollectionStores;
use gateway::vectors::VectorStore;
use gateway::vectors::embedded::EmbeddedVectors;
use gateway::vectors::s3::S3VectorStore;

#[derive(Parser)]
#[command(
    name = "gateway-local",
    version,
    about = "The AI gateway in one process, with embedded storage"
)]
struct Cli {
    /// Address to listen on [default: 127.0.0.1:8080, or `server.listen` from the config]
    #[arg(long, env = "GATEWAY_LISTEN", global = true)]
    listen: Option<String>,
    /// TOML config file [default: built-in mock models, plus OpenAI/Anthropic when their keys are set]
    #[arg(long, env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Where keys, spend and the response cache are stored (embedded backend)
    #[arg(
        long,
        env = "GATEWAY_DATA_DIR",
        default_value = ".gateway",
        global = true
    )]
    data_dir: PathBuf,
    /// `embedded` (SQLite in --data-dir), `aws` (the DynamoDB tables named by
    /// GATEWAY_KEYS_TABLE, GATEWAY_LIMITS_TABLE and GATEWAY_CACHE_TABLE, as on Lambda) or `redis`
    /// (limits and response cache in the Redis GATEWAY_REDIS_URL names, the rest in --data-dir)
    #[arg(
        long,
        env = "GATEWAY_BACKEND",
        default_value = "embedded",
        global = true
    )]
    backend: Backend,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Embedded,
    Aws,
    Redis,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default)
    Serve,
    /// Manage API keys
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Create the DynamoDB tables for `--backend aws` where they do not exist, the audit and
    /// responses tables too when GATEWAY_AUDIT_TABLE / GATEWAY_RESPONSES_TABLE name them (for
    /// local emulators and debugging; on AWS the SAM template owns them)
    CreateTables,
    /// Submit and follow batch jobs on a running gateway, local or on AWS (an HTTP client of
    /// its Files, Uploads and Batches APIs)
    Batch {
        #[command(flatten)]
        connection: batch_cli::Connection,
        #[command(subcommand)]
        action: batch_cli::BatchAction,
    },
    /// Ingest the .txt and .md files under a directory into a collection of a running gateway,
    /// local or on AWS (an HTTP client of its collections API)
    Ingest(ingest_cli::IngestArgs),
    /// Usage and spend by key, day and billed model, from the store (`--backend`): a table, or
    /// CSV with --csv
    Usage {
        /// One key's id [default: every key]
        #[arg(long)]
        key: Option<String>,
        /// First day, YYYY-MM-DD (UTC) [default: the first of --to's month]
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (UTC), at most 366 days after --from [default: today]
        #[arg(long)]
        to: Option<String>,
        /// CSV instead of a table
        #[arg(long)]
        csv: bool,
    },
    /// Replay a trace of chat requests in process (embedded store in a temporary folder, the
    /// built-in mock model, or --config's models with no provider credentials), with the cache
    /// on and off, and report hit rate, tokens, cost and what the cache saved
    Replay(replay::ReplayArgs),
    /// Write a trace for `replay` to standard output: Zipf-distributed repeats of distinct
    /// prompts
    TraceGen(replay::TraceGenArgs),
    /// Exit 0 when the server on --listen (a wildcard address is reached on loopback) answers
    /// `GET /health` with 200 in time, else 1: a container health check with no shell or curl
    Health,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print it (it is shown only once)
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant: Option<String>,
        /// Models the key may use, comma-separated [default: all]
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[arg(long)]
        rpm: Option<u64>,
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        budget_usd: Option<f64>,
        /// The key stops working after this many days
        #[arg(long, conflicts_with = "expires_at")]
        expires_in_days: Option<u64>,
        /// The key stops working at this time (epoch seconds)
        #[arg(long)]
        expires_at: Option<u64>,
        /// Shorthand for --role admin
        #[arg(long)]
        admin: bool,
        /// A preset of scopes: admin, user (the default) or read_only
        #[arg(long)]
        role: Option<Role>,
        /// Scopes, comma-separated (overrides the role's): chat, embeddings, batches,
        /// batches_read, collections, collections_read, usage, admin, metrics
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<Scope>,
        /// Drop the oldest turns of conversations too long for the model (instead of a 400)
        #[arg(long)]
        trim_context: bool,
        /// Usage plan tier at the API Gateway edge: free, standard or partner [default: standard]
        #[arg(long)]
        tier: Option<String>,
    },
    /// List keys (never their secrets; their visible prefix)
    List,
    /// Revoke a key by id
    Revoke { id: String },
    /// Give a key a new secret (printed once); the old one works for the grace period
    Rotate {
        id: String,
        /// How long the old secret keeps working, in seconds (at most 30 days)
        #[arg(long, default_value_t = DEFAULT_ROTATION_GRACE_SECS)]
        grace_seconds: u64,
    },
    /// Change a key: each option given replaces the key's value
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Models the key may use, comma-separated
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<Scope>>,
        #[arg(long)]
        role: Option<Role>,
        #[arg(long)]
        rpm: Option<u64>,
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        budget_usd: Option<f64>,
        #[arg(long, conflicts_with = "expires_in_days")]
        expires_at: Option<u64>,
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// Show the newest key administration entries (this month and last)
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// The CLI as the actor of its audit entries: `cli`, with the OS user when known.
fn cli_actor() -> AuditEntry {
    let user = env("USER")
        .or_else(|| env("USERNAME"))
        .filter(|u| !u.is_empty());
    AuditEntry {
        at: now_millis(),
        actor_key_id: user.map_or_else(|| "cli".to_owned(), |user| format!("cli:{user}")),
        actor_tenant: "cli".to_owned(),
        action: AuditAction::Create,
        target_key_id: String::new(),
        changes: Vec::new(),
        request_id: None,
    }
}

async fn audit(backends: &Backends, action: AuditAction, target: &str, changes: Vec<&str>) {
    let entry = AuditEntry {
        action,
        target_key_id: target.to_owned(),
        changes: changes.into_iter().map(str::to_owned).collect(),
        ..cli_actor()
    };
    gateway::keys::audit::record(backends.audit.as_ref(), entry).await;
}

type Failure = Box<dyn std::error::Error>;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None | Some(Command::Serve) => {
            serve(cli.listen, cli.config, cli.backend, cli.data_dir).await
        }
        Some(Command::Keys { action }) => keys(action, cli.backend, &cli.data_dir).await,
        Some(Command::CreateTables) => create_tables().await,
        Some(Command::Batch { connection, action }) => batch_cli::run(connection, action).await,
        Some(Command::Ingest(args)) => ingest_cli::run(args).await,
        Some(Command::Usage { key, from, to, csv }) => {
            usage(cli.backend, &cli.data_dir, key, from, to, csv).await
        }
        Some(Command::Replay(args)) => match cli.config {
            Some(path) => match load_config(Some(&path)) {
                Ok(config) => replay::replay(args, config).await,
                Err(error) => Err(error),
            },
            None => replay::replay(args, Config::built_in(|_| None)).await,
        },
        Some(Command::TraceGen(args)) => replay::trace_gen(args),
        Some(Command::Health) => match load_config(cli.config.as_ref()) {
            Ok(config) => health(cli.listen.or(config.server.listen)).await,
            Err(error) => Err(error),
        },
    };
    if let Err(error) = result {
        eprintln!("gateway-local: {error}");
        std::process::exit(1);
    }
}

/// How long the health check waits for the answer: well under a container runtime's timeout.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn health(listen: Option<String>) -> Result<(), Failure> {
    let listen = listen.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let mut address: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen} is not an address: {e}"))?;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let response = gateway::tls::http_client_builder()
        .timeout(HEALTH_TIMEOUT)
        .build()?
        .get(format!("http://{address}/health"))
        .send()
        .await
        .map_err(|e| format!("no answer from http://{address}/health: {e}"))?;
    match response.status() {
        reqwest::StatusCode::OK => Ok(()),
        status => Err(format!("http://{address}/health answered {status}").into()),
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, Failure> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
            Ok(Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => Ok(Config::built_in(env)),
    }
}

/// The backends, and the embedded store behind them when there is one (it is flushed at exit).
async fn open_backends(
    backend: Backend,
    data_dir: &Path,
) -> Result<(Backends, Option<Arc<EmbeddedStore>>), Failure> {
    match backend {
        Backend::Embedded => {
            let store = EmbeddedStore::open(data_dir)?;
            Ok((Backends::embedded(&store)?, Some(store)))
        }
        Backend::Redis => {
            let store = EmbeddedStore::open(data_dir)?;
            let redis = gateway::storage::redis::Redis::from_env()?;
            Ok((Backends::redis(&store, &redis)?, Some(store)))
        }
        Backend::Aws => {
            let mut backends = Backends::aws_from_env().await?;
            // With the stack's usage plans named, keys get their API Gateway keys as on Lambda.
            if env("GATEWAY_USAGE_PLAN_IDS").is_some_and(|v| !v.is_empty()) {
                backends.edge = Arc::new(ApiGatewayEdgeKeys::from_env().await?);
            }
            Ok((backends, None))
        }
    }
}

async fn create_tables() -> Result<(), Failure> {
    let config = DynamoConfig::from_env()?;
    let sdk_config = gateway::tls::aws_config().load().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk_config);
    gateway::storage::dynamo::create_tables(&client, &config).await?;
    let mut ready = vec![config.keys_table, config.limits_table, config.cache_table];
    if let Some(audit_table) = env(AUDIT_TABLE_ENV).filter(|table| !table.trim().is_empty()) {
        DynamoAuditLog::create_table(&client, &audit_table).await?;
        ready.push(audit_table);
    }
    if let Some(responses_table) = env(RESPONSES_TABLE_ENV).filter(|table| !table.trim().is_empty())
    {
        gateway::storage::dynamo::create_responses_table(&client, &responses_table).await?;
        ready.push(responses_table);
    }
    println!("tables ready: {}", ready.join(", "));
    Ok(())
}

async fn serve(
    listen: Option<String>,
    config_path: Option<PathBuf>,
    backend: Backend,
    data_dir: PathBuf,
) -> Result<(), Failure> {
    let traces = gateway::telemetry::otlp::init_logging_and_traces(&env);
    let config = load_config(config_path.as_ref())?;
    let (mut backends, embedded) = open_backends(backend, &data_dir).await?;
    if let Some(memcached) = &config.cache.memcached {
        let address = memcached.resolve_address(env)?;
        tracing::info!(%address, "response cache in memcached");
        backends.cache = Arc::new(MemcachedCacheStore::new(address, memcached));
    }
    let first_run_key = bootstrap_keys(&backends).await?;
    let mut gateway = Gateway::new(&config, backends, &env)?;
    let vectors: Arc<dyn VectorStore> = match &embedded {
        Some(store) => {
            gateway.batch = Some(BatchBackends::embedded(store, &data_dir, env)?);
            gateway.ingest = Some(IngestBackends::embedded(store, &data_dir, env)?);
            gateway.responses = Some(Arc::clone(store) as _);
            gateway.usage = Some(Arc::clone(store) as _);
            Arc::new(EmbeddedVectors::new(Arc::clone(store)))
        }
        // The API only: on AWS the batch and ingest functions work their queues off. Vectors go
        // to the stack's S3 Vectors index when it is named, else to the embedded store in
        // --data-dir.
        None => {
            let sdk = gateway::tls::aws_config().load().await;
            let dynamo = gateway::storage::dynamo::client(&sdk);
            gateway.batch = BatchBackends::aws(&sdk, &dynamo, env)?;
            gateway.ingest = IngestBackends::aws(&sdk, &dynamo, env)?;
            gateway.responses = gateway::responses::dynamo_store_from_env(&dynamo, env);
            gateway.usage = Some(Arc::new(DynamoUsageStore::from_env(dynamo.clone())?));
            match S3VectorStore::from_lookup(&sdk, env)? {
                Some(store) => Arc::new(store),
                None => Arc::new(EmbeddedVectors::new(EmbeddedStore::open(&data_dir)?)),
            }
        }
    };
    let vectors = CollectionStores::configured(&config.vectors, vectors, env)?;
    gateway.vectors = Some(vectors);
    let gateway = Arc::new(gateway);
    // Queued ingests run in process over the embedded queue, as the ingest function does on AWS.
    if embedded.is_some() {
        tokio::spawn(gateway::pipeline::ingest::run_worker(Arc::clone(&gateway)));
    }
    // The batch worker runs in process over the embedded queue: it takes items from it while
    // the API serves.
    if let (Some(batch), Some(_)) = (gateway.batch.clone(), &embedded) {
        let keys = Arc::clone(gateway.auth.store());
        let runner = Arc::new(PipelineRunner(Arc::clone(&gateway)));
        tokio::spawn(Arc::new(Worker::new(batch, keys, runner)).run());
    }

    let listen = listen
        .or_else(|| config.server.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    serve_metrics(&config.server).await?;
    print_banner(address, &gateway, first_run_key.as_deref());

    gateway::http::server::serve(
        listener,
        gateway::http::router(gateway),
        &config.server,
        shutdown_signal(),
    )
    .await;
    if let Some(store) = embedded {
        store.flush();
    }
    if let Some(traces) = traces {
        traces.shutdown();
    }
    Ok(())
}

/// Serves `/metrics` without a key on `server.metrics_listen`, when it is set, for a Prometheus
/// scraper on a private network; the main listener's `/metrics` needs an admin key all the
/// same. Bound before the banner, so that an address in use fails the start; served with the
/// same connection timeouts and cap as the main listener.
async fn serve_metrics(server: &ServerConfig) -> Result<(), Failure> {
    let Some(address) = server.metrics_listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} (server.metrics_listen): {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "serving /metrics without a key (server.metrics_listen)");
    let server = server.clone();
    tokio::spawn(async move {
        let router = gateway::http::metrics_router();
        gateway::http::server::serve(listener, router, &server, std::future::pending()).await;
    });
    Ok(())
}

/// Applies `GATEWAY_ADMIN_KEY`, and on the very first run (no keys at all) creates a key so the
/// printed curl example works as is. Returns that key, which is shown only this once.
async fn bootstrap_keys(backends: &Backends) -> Result<Option<String>, Failure> {
    let (store, edge) = (backends.keys.as_ref(), backends.edge.as_ref());
    if let Some(admin) = env("GATEWAY_ADMIN_KEY").filter(|k| !k.is_empty()) {
        ensure_admin_key(store, edge, &admin, now_secs()).await?;
        return Ok(None);
    }
    if !store.list().await?.is_empty() {
        return Ok(None);
    }
    let (secret, _) = provision(
        store,
        edge,
        NewKey {
            name: "first-run".to_owned(),
            ..NewKey::default()
        },
    )
    .await?;
    Ok(Some(secret))
}

/// Prints where the gateway listens and how to call it, in one write: whoever reads the first
/// line and closes the pipe (a test, a supervisor) must not make a later write fail.
fn print_banner(address: SocketAddr, gateway: &Gateway, first_run_key: Option<&str>) {
    use std::io::Write;
    let url = format!("http://{address}");
    let models: Vec<&str> = gateway.models.iter().map(Model::name).collect();
    let key = first_run_key.unwrap_or("$GATEWAY_KEY");
    let key_line = match first_run_key {
        Some(secret) => format!("First run: created API key {secret} (shown once; stored hashed)"),
        None => {
            "Create a key with: gateway-local keys create --name me   (then export GATEWAY_KEY=...)"
                .to_owned()
        }
    };
    let banner = format!(
        "AI gateway listening on {url} (OpenAI API at {url}/v1)\n\
         Models: {models}\n\
         {key_line}\n\n\
         Try it:\n  \
         curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' \
         -H 'Content-Type: application/json' \
         -d '{{\"model\":\"mock\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello gateway\"}}]}}'\n\n",
        models = models.join(", "),
    );
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        tracing::warn!("could not print the start-up banner");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Prints the usage report `GET /v1/admin/usage` answers, from the store.
async fn usage(
    backend: Backend,
    data_dir: &Path,
    key: Option<String>,
    from: Option<String>,
    to: Option<String>,
    csv: bool,
) -> Result<(), Failure> {
    let query = UsageQuery::parse(key, from.as_deref(), to.as_deref(), day_of(now_secs()))
        .map_err(|e| e.message)?;
    let store: Arc<dyn UsageStore> = match backend {
        // Usage rows stay in the embedded store with the Redis backend.
        Backend::Embedded | Backend::Redis => EmbeddedStore::open(data_dir)?,
        Backend::Aws => {
            let sdk = gateway::tls::aws_config().load().await;
            Arc::new(DynamoUsageStore::from_env(
                gateway::storage::dynamo::client(&sdk),
            )?)
        }
    };
    let rows = store.usage(&query).await?;
    if csv {
        print!("{}", to_csv(&rows));
    } else {
        print!("{}", to_table(&rows));
    }
    Ok(())
}

async fn keys(action: KeysAction, backend: Backend, data_dir: &Path) -> Result<(), Failure> {
    let (backends, embedded) = open_backends(backend, data_dir).await?;
    let store = Arc::clone(&backends.keys);
    match action {
        KeysAction::Create {
            name,
            tenant,
            models,
            rpm,
            tpm,
            budget_usd,
            expires_in_days,
            expires_at,
            admin,
            role,
            scopes,
            trim_context,
            tier,
        } => {
            let new = NewKey {
                name,
                tenant,
                models,
                rpm,
                tpm,
                budget_usd,
                expires_at,
                expires_in_days,
                admin,
                role,
                scopes,
                context_policy: if trim_context {
                    ContextPolicy::Trim
                } else {
                    ContextPolicy::Reject
                },
                tier,
                ..NewKey::default()
            };
            let fields = new.fields();
            let (secret, record) = provision(store.as_ref(), backends.edge.as_ref(), new).await?;
            audit(&backends, AuditAction::Create, &record.id, fields).await;
            eprintln!(
                "created key {} ({}); it is shown only once:",
                record.id, record.name
            );
            println!("{secret}");
        }
        KeysAction::List => {
            println!(
                "{:<22} {:<12} {:<20} {:<12} {:<8} {:<8} {:<12} {:<12} STATUS",
                "ID", "PREFIX", "NAME", "TENANT", "RPM", "TPM", "BUDGET_USD", "SPENT_USD"
            );
            for record in store.list().await? {
                let spent = backends
                    .limiter
                    .spent_usd(&record.id, now_secs())
                    .await
                    .unwrap_or(0.0);
                let dash = || "-".to_owned();
                let status = if record.disabled {
                    "revoked"
                } else if record.is_expired(now_secs()) {
                    "expired"
                } else {
                    "active"
                };
                let scopes: Vec<&str> = record.scopes().iter().map(|s| s.as_str()).collect();
                println!(
                    "{:<22} {:<12} {:<20} {:<12} {:<8} {:<8} {:<12} {:<12.6} {status} scopes={}{}",
                    record.id,
                    record.prefix.as_deref().unwrap_or("-"),
                    record.name,
                    record.tenant,
                    record.rpm.map_or_else(dash, |v| v.to_string()),
                    record.tpm.map_or_else(dash, |v| v.to_string()),
                    record.budget_usd.map_or_else(dash, |v| v.to_string()),
                    spent,
                    scopes.join(","),
                    if record.models.is_empty() {
                        String::new()
                    } else {
                        format!(" models={}", record.models.join(","))
                    },
                );
            }
        }
        KeysAction::Revoke { id } => {
            let revoked = revoke(store.as_ref(), backends.edge.as_ref(), &id).await;
            if matches!(revoked, Ok(true) | Err(ProvisionError::EdgeCleanup { .. })) {
                audit(&backends, AuditAction::Revoke, &id, vec!["disabled"]).await;
            }
            if !revoked? {
                return Err(format!("no key with id `{id}`").into());
            }
            println!("revoked {id}");
        }
        KeysAction::Rotate { id, grace_seconds } => {
            match store.get_by_id(&id).await? {
                None => return Err(format!("no key with id `{id}`").into()),
                Some(record) if record.disabled => {
                    return Err(format!("key `{id}` is revoked; create a new key").into());
                }
                Some(_) => {}
            }
            let now = now_secs();
            let Some((secret, _)) = rotate_key(store.as_ref(), &id, grace_seconds, now)
                .await
                .map_err(|e| e.message)?
            else {
                return Err(format!("no key with id `{id}`").into());
            };
            audit(
                &backends,
                AuditAction::Rotate,
                &id,
                vec!["secret", "prefix"],
            )
            .await;
            eprintln!(
                "rotated {id}; the old secret works until {} (epoch s). The new one is shown only once:",
                now.saturating_add(grace_seconds)
            );
            println!("{secret}");
        }
        KeysAction::Update {
            id,
            name,
            models,
            scopes,
            role,
            rpm,
            tpm,
            budget_usd,
            expires_at,
            expires_in_days,
        } => {
            let change = KeyChange {
                name,
                models,
                scopes,
                role,
                rpm,
                tpm,
                budget_usd,
                expires_at,
                expires_in_days,
                guard: None,
            }
            .validate(now_secs())
            .map_err(|e| e.message)?;
            let fields = change.fields();
            if fields.is_empty() {
                return Err("nothing to change: give at least one option".into());
            }
            if store
                .update(&id, &|record| change.apply(record))
                .await?
                .is_none()
            {
                return Err(format!("no key with id `{id}`").into());
            }
            audit(&backends, AuditAction::Update, &id, fields.clone()).await;
            println!("updated {id}: {}", fields.join(", "));
        }
        KeysAction::Audit { limit } => {
            let limit = limit.clamp(1, gateway::keys::audit::MAX_AUDIT_LIMIT);
            for entry in backends.audit.newest(limit, now_secs()).await? {
                println!("{}", serde_json::to_string(&entry)?);
            }
        }
    }
    if let Some(store) = embedded {
        store.flush();
    }
    Ok(())
}
