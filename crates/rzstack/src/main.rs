//! The `rzstack` binary: `rzstack serve` runs a management node, `rzstack agent` a host agent,
//! `rzstack up` both plus a default topology (an all-in-one cloud on this machine).

mod up;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "rzstack", version, about = "A ZStack-compatible cloud management platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the management node (the ZStack v1 REST API under /zstack/v1).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "RZSTACK_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Database URL: sqlite:///path/to/file.db or postgres://user:pass@host:port/db
        /// (default: <data-dir>/rzstack.db).
        #[arg(long, env = "RZSTACK_DATABASE_URL")]
        database: Option<String>,
        /// Directory for the embedded database and node state.
        #[arg(long, env = "RZSTACK_DATA_DIR", default_value = "./rzstack-data")]
        data_dir: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "RZSTACK_LOG_JSON")]
        log_json: bool,
    },
    /// Run the host agent on a KVM host (the management node drives it over HTTP; README,
    /// "Host agent").
    Agent {
        /// Address to listen on (use 0.0.0.0:7070 to be reachable from a remote management node).
        #[arg(long, env = "RZSTACK_AGENT_LISTEN", default_value = "127.0.0.1:7070")]
        listen: String,
        /// Directory for the agent's state (its token file, the host uuid).
        #[arg(long, env = "RZSTACK_AGENT_DATA_DIR", default_value = "./rzstack-agent-data")]
        data_dir: PathBuf,
        /// QEMU accelerator: auto (KVM only where it really works), kvm or tcg.
        #[arg(long, env = "RZSTACK_AGENT_ACCEL", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
        accel: String,
        /// The shared secret callers must send as `Authorization: Bearer <token>` (default: the
        /// data directory's `token` file, created at first start).
        #[arg(long, env = "RZSTACK_AGENT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "RZSTACK_LOG_JSON")]
        log_json: bool,
    },
    /// All-in-one cloud on this machine (as root): the management node (SQLite) and the host
    /// agent in one process, plus a default topology made through the API (found again by name
    /// on later runs); prints a ready curl sequence that creates a VM. Ctrl-C stops it; guests
    /// keep running and are re-adopted by the next `rzstack up`.
    Up {
        /// Address the management node listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Directory for everything: the database, the agent's state, primary and backup storage.
        #[arg(long, default_value = "./rzstack-data")]
        data_dir: PathBuf,
        /// The guest image added to the image store (built by scripts/make-test-image.sh).
        #[arg(long, default_value = "target/test-guest/guest.qcow2")]
        image: PathBuf,
        /// Address the host agent listens on (the management node reaches it on this port).
        #[arg(long, default_value = "127.0.0.1:7070")]
        agent_listen: String,
        /// QEMU accelerator: auto (KVM only where it really works), kvm or tcg.
        #[arg(long, env = "RZSTACK_AGENT_ACCEL", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
        accel: String,
        /// Log as JSON lines instead of text (logs go to stderr; `RZSTACK_LOG` sets the filter,
        /// default `warn`).
        #[arg(long, env = "RZSTACK_LOG_JSON")]
        log_json: bool,
    },
}

fn init_logs(json: bool) {
    init_logs_with(json, "info,sqlx=warn")
}

fn init_logs_with(json: bool, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RZSTACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("signal received, shutting down");
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up { listen, data_dir, image, agent_listen, accel, log_json } => {
            init_logs_with(log_json, "warn");
            let accel = match accel.parse::<rzstack_agent::Accel>() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            up::main(up::UpConfig { listen, agent_listen, data_dir, image, accel }, shutdown_signal())
        }
        Command::Agent { listen, data_dir, accel, token, log_json } => {
            init_logs(log_json);
            let accel = match accel.parse::<rzstack_agent::Accel>() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let config = rzstack_agent::Config { listen, data_dir, accel, token };
            match rt.block_on(rzstack_agent::run(config, shutdown_signal())) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "host agent failed");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Serve { listen, database, data_dir, log_json } => {
            init_logs(log_json);
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let config = rzstack_server::Config { listen, database, data_dir };
            match rt.block_on(rzstack_server::serve(config, shutdown_signal())) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "management node failed");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
