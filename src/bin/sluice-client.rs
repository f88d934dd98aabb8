//! `sluice-client`: the customer's side of Sluice priority coupons.
//!
//! Keeps a holder key and installed coupons in a state directory, redeems a
//! coupon in-band through the appliance, or, with no appliance in the path,
//! forwards a local TCP port applying the coupon's modes. The logic is
//! `sluice_coupon::client`; this file parses arguments and prints.
//!
//! Exit codes: 0 done (for `redeem`: granted); 2 `redeem` refused; 1 any
//! error (bad usage, files, no answer from the appliance).
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sluice_coupon::client::{
    default_dir, format_status, forward, parse_via, Client, ForwardTarget, RedeemOptions,
};
use sluice_coupon::time::now_unix;
use sluice_coupon::Status;

/// Hold, redeem and use Sluice priority coupons.
#[derive(Parser, Debug)]
#[command(name = "sluice-client", version, about, long_about)]
struct Cli {
    /// State directory (holder key, installed coupons); created 0700.
    /// Default: $HOME/.sluice-client.
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the holder key if absent and print its public key (PASERK
    /// k4.public), to give to the operator (`sluicectl coupon issue
    /// --holder`).
    Keygen,
    /// Check and store a coupon bundle from the operator.
    Install {
        /// The bundle file (JSON).
        bundle: PathBuf,
    },
    /// List installed coupons.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Redeem an installed coupon through the appliance.
    Redeem {
        /// The coupon id.
        id: String,
        /// The appliance's redemption address: IP[:port], port 7466 by
        /// default.
        #[arg(long, value_name = "IP[:PORT]")]
        via: String,
        /// Send from this source address (default: the one the kernel picks
        /// for --via).
        #[arg(long, value_name = "IP")]
        src: Option<IpAddr>,
        /// Milliseconds to wait for a status per attempt.
        #[arg(long, value_name = "MS", default_value = "1000")]
        timeout_ms: u64,
        /// Attempts, each with a fresh proof.
        #[arg(long, default_value = "3")]
        attempts: u32,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forward a local TCP port to a destination with the coupon's modes
    /// applied (port, addr, dscp), for when no appliance is in the path.
    Forward {
        /// The coupon id.
        id: String,
        /// Local address to listen on, e.g. 127.0.0.1:8443.
        #[arg(long, value_name = "IP:PORT")]
        listen: SocketAddr,
        /// Destination HOST:PORT (the coupon's port/addr modes replace the
        /// port/host).
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version go to stdout and succeed; bad usage is an
            // error (1), never confused with "refused" (2).
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice-client: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = match cli.dir.or_else(default_dir) {
        Some(d) => d,
        None => bail!("no --dir given and $HOME is not set"),
    };
    let client = Client::open(&dir)?;
    match cli.cmd {
        Cmd::Keygen => {
            let (public, created) = client.keygen()?;
            if created {
                eprintln!("created {}", client.holder_path().display());
            }
            println!("{public}");
        }
        Cmd::Install { bundle } => {
            let inst = client
                .install(&bundle)
                .with_context(|| format!("installing {}", bundle.display()))?;
            print!("installed {}", inst.describe(now_unix()));
        }
        Cmd::List { json } => {
            let list = client.list()?;
            if json {
                let all: Vec<_> = list.iter().map(|i| i.to_json()).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if list.is_empty() {
                eprintln!("no coupons installed in {}", dir.display());
            } else {
                let now = now_unix();
                for inst in &list {
                    print!("{}", inst.describe(now));
                }
            }
        }
        Cmd::Redeem {
            id,
            via,
            src,
            timeout_ms,
            attempts,
            json,
        } => {
            let opts = RedeemOptions {
                via: parse_via(&via)?,
                src,
                timeout: Duration::from_millis(timeout_ms),
                attempts,
            };
            let status = client.redeem(&id, &opts)?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                println!("{}", format_status(&status));
            }
            if status.status != Status::Granted {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Forward { id, listen, to } => {
            let coupon = client.get(&id)?;
            let target = ForwardTarget::for_coupon(&coupon.claims, &to)?;
            let listener =
                TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
            log::info!(
                "forwarding {listen} -> {}:{}{} for coupon {id}",
                target.host,
                target.port,
                target
                    .dscp
                    .map(|d| format!(" dscp {d}"))
                    .unwrap_or_default()
            );
            forward(&listener, &target).with_context(|| format!("accepting on {listen}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
