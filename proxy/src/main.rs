//! The `pgrelay` command.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgrelay::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "pgrelay",
    version,
    about = "A PostgreSQL replication proxy: writes to the primary, reads to replicas"
)]
struct Cli {
    /// YAML configuration file (see config.example.yaml). PGRELAY_* variables override it.
    #[arg(long, short, env = "PGRELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "PGRELAY_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local primary and two streaming replicas and serve them (needs PostgreSQL installed).
    Demo {
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        #[arg(long, default_value_t = 2)]
        replicas: usize,
    },
    /// Validate the configuration and exit.
    CheckConfig,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Ctrl-C or SIGTERM (what Kubernetes sends) both mean a clean shutdown.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Serves until asked to stop; each SIGHUP re-reads the config file (as `POST /reload`
/// does; the reloader logs the outcome).
async fn reload_on_hangup(handle: &pgrelay::app::Handle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            let stop = stop_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        let _ = handle.reload();
                    }
                }
            }
        }
    }
    stop_signal().await;
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), never a backtrace: this is for operators.
            eprintln!("pgrelay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Validate configuration before anything else (no port is bound by a bad config).
    let config = match (&cli.command, &cli.config) {
        (Some(Command::Demo { .. }), _) => None,
        (_, Some(path)) => Some(Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        (_, None) => anyhow::bail!(
            "no configuration: pass --config FILE (or set PGRELAY_CONFIG), or run `pgrelay demo`"
        ),
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!("configuration is valid");
        return Ok(());
    }
    init_logging(cli.log_format);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limits = config
        .as_ref()
        .map(|c| c.limits.clone())
        .unwrap_or_default();
    let threads = limits.threads(cores);
    tracing::info!(threads, cores, "session threads");
    // One thread: tokio's single-threaded scheduler, which skips the work-stealing
    // machinery (callgrind: 16,750 -> 15,268 instructions per `pgbench -S` transaction).
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        match (cli.command, config) {
            (
                Some(Command::Demo {
                    listen,
                    admin_listen,
                    replicas,
                }),
                _,
            ) => {
                let opts = pgrelay::demo::DemoOptions {
                    listen,
                    admin_listen,
                    replicas,
                };
                pgrelay::demo::run(opts, stop_signal())
                    .await
                    .context("demo failed")?;
            }
            (_, Some(config)) => {
                let listeners = pgrelay::app::Listeners::bind(&config).await?;
                let handle = pgrelay::app::start(config, listeners).await?;
                reload_on_hangup(&handle).await;
                tracing::info!("shutting down");
                handle.shutdown().await?;
            }
            (_, None) => anyhow::bail!("no configuration"),
        }
        Ok(())
    })
}
