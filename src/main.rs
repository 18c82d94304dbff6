//! The `sessiongate` command: run the gateway, check a config, or run the demo.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use sessiongate::config::{self, Config, LogFormat};
use sessiongate::server;

/// A reverse-proxy sidecar that gives legacy web backends server-side sessions.
#[derive(Debug, Parser)]
#[command(name = "sessiongate", version, about)]
struct Cli {
    /// Configuration file (TOML). Every key has a default; SESSIONGATE_* variables
    /// override the file (`__` between levels, e.g. SESSIONGATE_SESSION__TIMEOUT=5m).
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print the effective values.
    Check,
    /// Run a bundled legacy demo app behind the gateway.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    let defaults = match command {
        Command::Demo => demo_defaults(),
        Command::Run | Command::Check => Config::default(),
    };
    let config = match config::load_with_defaults(cli.config.as_deref(), defaults) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!(
                "sessiongate: invalid configuration{}:",
                describe_file(cli.config.as_deref())
            );
            for error in &errors {
                eprintln!("  {error}");
            }
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Check => {
            print!("{}", config.to_effective_toml());
            eprintln!(
                "sessiongate: configuration OK{}",
                describe_file(cli.config.as_deref())
            );
            ExitCode::SUCCESS
        }
        Command::Run => run(config, false),
        Command::Demo => run(config, true),
    }
}

/// The demo listens on loopback only, and (until the per-tab agent ships) carries
/// its session in a cookie so that it works in any browser and with curl.
fn demo_defaults() -> Config {
    let mut config = Config::default();
    config.listen.address = SocketAddr::from(([127, 0, 0, 1], 8080));
    config
}

fn describe_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

fn run(config: Config, demo: bool) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sessiongate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sessiongate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: Config, demo: bool) -> anyhow::Result<()> {
    let demo_stop = CancellationToken::new();
    if demo {
        let app = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("cannot start the demo app")?;
        let app_addr = app.local_addr().context("cannot start the demo app")?;
        config.upstream.url = format!("http://{app_addr}");
        let header = http::HeaderName::try_from(config.upstream.header.as_str())
            .context("upstream.header is not a valid header name")?;
        tokio::spawn(sessiongate::demo::serve(app, header, demo_stop.clone()));
    }

    let running = server::start(config).await?;
    if demo {
        println!(
            "sessiongate demo: open http://{} in a browser",
            running.public_addr
        );
        println!(
            "                  metrics at http://{}/metrics",
            running.admin_addr
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    running.shutdown();
    running.wait().await;
    demo_stop.cancel();
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
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
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG, when set, wins over log.level (handy when debugging one module).
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = config
        .log
        .color
        .use_ansi(std::io::stderr().is_terminal(), no_color);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        // JSON is for machines: never coloured.
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(ansi).init(),
    }
}
