//! The `sessiongate` command: run the gateway, check a config, or run the demo.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use sessiongate::config::{self, Config, LogFormat, Source};
use sessiongate::server::{self, Bind, Binds, Options};
use sessiongate::web::client::error_chain;

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
    Run(RunArgs),
    /// Validate the configuration and print the effective values.
    Check,
    /// Run a bundled legacy demo app behind the gateway (http://127.0.0.1:8080, or a
    /// free port when 8080 is taken and no address is configured).
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Copy, Default, Args)]
struct RunArgs {
    /// Take the listening sockets over from the gateway running on
    /// `persist.handoff` (a restart without a refused connection); binds as usual
    /// when none runs there.
    #[arg(long)]
    takeover: bool,
}

/// The demo's built-in addresses. Hidden: they exist so that a test can hold the
/// "default" port itself instead of depending on whether 8080 is free on the machine.
/// A configured address (file or SESSIONGATE_* variable) still wins over them.
#[derive(Debug, Clone, Copy, Args)]
struct DemoArgs {
    #[arg(long, hide = true, default_value = "127.0.0.1:8080")]
    default_listen: SocketAddr,
    #[arg(long, hide = true, default_value = "127.0.0.1:9090")]
    default_admin: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    let defaults = match command {
        Command::Demo(args) => demo_defaults(args),
        Command::Run(_) | Command::Check => Config::default(),
    };
    let loaded = match config::load_sourced(cli.config.as_deref(), defaults) {
        Ok(loaded) => loaded,
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
            print!("{}", loaded.config.to_effective_toml());
            for (key, reason) in config::validate::warnings(&loaded.config) {
                eprintln!("sessiongate: warning: {key}: {reason}");
            }
            eprintln!(
                "sessiongate: configuration OK{}",
                describe_file(cli.config.as_deref())
            );
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(
            loaded.config,
            Options {
                takeover: args.takeover,
                ..Options::default()
            },
            false,
        ),
        Command::Demo(_) => {
            // An address nobody chose may move to a free port; a chosen one may not.
            let bind = |key: &str| match loaded.source(key) {
                Source::Default => Bind::OrFreePort,
                Source::File(_) | Source::Env(_) => Bind::Exact,
            };
            let binds = Binds {
                listen: bind("listen.address"),
                admin: bind("admin.address"),
            };
            let options = Options {
                binds,
                takeover: false,
            };
            run(loaded.config, options, true)
        }
    }
}

/// The demo listens on loopback only and wires the demo app's own hooks, which log
/// and count every call (its About page shows the counts).
fn demo_defaults(args: DemoArgs) -> Config {
    let mut config = Config::default();
    config.listen.address = args.default_listen;
    config.admin.address = args.default_admin;
    config.hooks.start = "/hooks/start".into();
    config.hooks.timeout = "/hooks/timeout".into();
    config.hooks.end = "/hooks/end".into();
    config
}

fn describe_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

/// Runs the gateway (with the bundled demo app when `demo`).
fn run(config: Config, options: Options, demo: bool) -> ExitCode {
    init_logging(&config);
    for (key, reason) in config::validate::warnings(&config) {
        tracing::warn!(key, "configuration: {reason}");
    }
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
    match runtime.block_on(serve(config, options, demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sessiongate: {}", error_chain(error.as_ref()));
            if let Some(hint) = error
                .downcast_ref::<server::StartError>()
                .and_then(server::StartError::hint)
            {
                eprintln!("sessiongate: hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: Config, options: Options, demo: bool) -> anyhow::Result<()> {
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

    let wanted = (config.listen.address, config.admin.address);
    let running = server::start_with_options(config, options).await?;
    if demo {
        for (what, wanted, got) in [
            ("the demo", wanted.0, running.public_addr),
            ("the admin listener", wanted.1, running.admin_addr),
        ] {
            if wanted.port() != 0 && wanted != got {
                println!(
                    "sessiongate demo: {wanted} is in use, so {what} listens on port {} instead",
                    got.port()
                );
            }
        }
        println!(
            "sessiongate demo: open http://{} in a browser",
            running.public_addr
        );
        println!(
            "                  metrics at http://{}/metrics",
            running.admin_addr
        );
        println!(
            "                  sessions at http://{}/sessions",
            running.admin_addr
        );
    }
    // SIGTERM/SIGINT, or a new process took the listeners over (`--takeover`).
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down: draining connections"),
        _ = running.stopping() => tracing::info!("handed over: draining connections"),
    }
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
