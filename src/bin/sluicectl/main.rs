//! `sluicectl`: the operator CLI over the appliance's control socket.
//!
//! Parses arguments into one request (or a listing, or an import), checks
//! it with the appliance's own parser, sends it over the socket and prints
//! the answer: aligned tables for people, or with `--json` the response
//! lines as the appliance sent them. The client logic is
//! `sluice_control::client`.
//!
//! Exit codes: 0 done; 1 refused (by the appliance, or by the same check
//! here before sending), failed, or the appliance is unreachable; 2 bad
//! usage (unknown flag, a flag value that does not parse).
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

mod signed;
use clap::{ArgGroup, Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use sluice_control::client::{
    self, check_csv, send_csv, Client, ClientError, ImportError, ImportFailure, DEFAULT_SOCKET,
};
use sluice_control::policy::model::{
    CouponSpec, DecisionSpec, EligibilitySpec, KeySpec, LoginSpec, RateSpec, SpSpec, TierSpec,
};
use sluice_control::policy::protocol::MAX_LIST_LIMIT;
use sluice_control::policy::{DscpMark, Level, Mss, Prefix, Table, MAX_LINE_BYTES};

/// Operate a running Sluice appliance through its control socket: add,
/// change, remove and list policy rows, import CSV files, read counters.
#[derive(Parser, Debug)]
#[command(name = "sluicectl", version, about, long_about)]
struct Cli {
    /// The appliance's control socket.
    #[arg(long, global = true, value_name = "PATH", env = "SLUICE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Print the response lines as JSON, as the appliance sent them, instead
    /// of human output.
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for each response (0: no limit).
    #[arg(long, global = true, value_name = "SECS", default_value = "30", value_parser = secs)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Add rows to a table: all or none, each key must be new.
    Add(Rows),
    /// Replace rows by their key: all or none, each must exist.
    Update(Rows),
    /// Remove rows by key: all or none, each must exist.
    Remove(Keys),
    /// Apply mixed changes atomically, from a file.
    Batch {
        /// The whole request (`{"op":"batch","changes":[..]}`) or its
        /// changes: a JSON array, or one change per line ("-": stdin).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Show one row.
    Get(GetArgs),
    /// List rows in key order, a page at a time or all of them.
    List(ListArgs),
    /// Show the sequence number, table sizes and store counters.
    Stats,
    /// Show the table sizes and their memory.
    Tables,
    /// Import a CSV file into a table, in batches, with progress.
    Import(ImportArgs),
    /// Coupons: signed coupons (keygen, issue, revoke, list, show, redeem,
    /// stats) and the binding rows a redeemed coupon gives a subscriber,
    /// optionally for one destination prefix and/or port (add, update,
    /// remove).
    #[command(subcommand)]
    Coupon(CouponCmd),
    /// Logins: a subscriber address logged in with a tier.
    #[command(subcommand)]
    Login(LoginCmd),
    /// Tiers: a named decision that logins refer to.
    #[command(subcommand)]
    Tier(TierCmd),
    /// Service provider allocations on an address or a prefix.
    #[command(subcommand)]
    Sp(SpCmd),
    /// Eligibility: the destinations coupons and tiers may prioritise.
    #[command(subcommand)]
    Eligibility(EligibilityCmd),
    /// The default decision, for all other traffic.
    #[command(subcommand)]
    Default(DefaultCmd),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["file", "entries"])))]
struct Rows {
    /// coupon, login, tier, sp, eligibility or default.
    table: Table,
    /// Entries from a file: a JSON array, or one object per line ("-":
    /// stdin).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Entries as JSON objects (or arrays of them), e.g.
    /// '{"name":"gold","decision":{"level":"premium"}}'.
    #[arg(value_name = "JSON")]
    entries: Vec<String>,
}

/// A key on the command line: the values of the key's fields, JSON, or
/// flags.
#[derive(Args, Debug)]
struct KeyFlags {
    /// The key of a coupon or an SP allocation.
    #[arg(long, conflicts_with = "keys")]
    id: Option<String>,
    /// The key of a login.
    #[arg(long, value_name = "IP", conflicts_with = "keys")]
    subscriber: Option<IpAddr>,
    /// The key of a tier.
    #[arg(long, conflicts_with = "keys")]
    name: Option<String>,
    /// The prefix of an eligibility rule.
    #[arg(long, value_name = "PREFIX", value_parser = prefix, conflicts_with = "keys")]
    dst: Option<Prefix>,
    /// The port of an eligibility rule (with --dst or a plain prefix).
    #[arg(long, value_parser = port())]
    port: Option<u16>,
}

#[derive(Args, Debug)]
struct Keys {
    table: Table,
    /// Keys: the key's value (`cp-1`, `10.0.0.7`, `gold`, `203.0.113.0/24`)
    /// or a JSON object (`{"dst":"0.0.0.0/0","port":5060}`).
    #[arg(value_name = "KEY")]
    keys: Vec<String>,
    #[command(flatten)]
    flags: KeyFlags,
}

#[derive(Args, Debug)]
struct GetArgs {
    table: Table,
    /// The key's value or a JSON object; none for the default decision.
    #[arg(value_name = "KEY", num_args = 0..=1)]
    keys: Vec<String>,
    #[command(flatten)]
    flags: KeyFlags,
}

#[derive(Args, Debug)]
struct ListArgs {
    table: Table,
    /// Rows to skip.
    #[arg(long, value_name = "N")]
    offset: Option<u64>,
    /// Rows to show (the appliance's default: 1000; at most 10000).
    #[arg(long, value_name = "N", conflicts_with = "all")]
    limit: Option<u64>,
    /// Every row, page after page. Human output holds them all in memory
    /// to align them; --json streams the pages.
    #[arg(long)]
    all: bool,
}

#[derive(Args, Debug)]
struct ImportArgs {
    /// The table (not default).
    table: Table,
    /// CSV with a header row; see the columns in the protocol docs.
    file: PathBuf,
    /// Rows per request (a request is all or nothing). A batch is also cut
    /// before its line would pass the appliance's limit.
    #[arg(long, value_name = "ROWS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long, short)]
    quiet: bool,
    /// Only check the file (every row, as the import would); send nothing.
    #[arg(long)]
    check: bool,
}

/// The decision flags every table with a decision shares.
#[derive(Args, Debug)]
struct DecisionArgs {
    /// Priority level: 0..=7 or a name (network-control, voice,
    /// interactive, premium, standard, best-effort, bulk, scavenger).
    #[arg(long)]
    level: Level,
    /// DSCP to mark: 0..=63, or `level` for the level's own.
    #[arg(long)]
    dscp: Option<DscpMark>,
    /// Rewrite the destination port to N.
    #[arg(long, value_name = "N", value_parser = port())]
    remap_port: Option<u16>,
    /// Rewrite the destination address to IP.
    #[arg(long, value_name = "IP")]
    remap_ip: Option<IpAddr>,
    /// Clamp the TCP MSS of SYNs to N bytes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(i64::from(Mss::MIN)..=i64::from(Mss::MAX)))]
    mss: Option<u16>,
    /// Committed rate, bits per second (with --rate-peak).
    #[arg(long, value_name = "BPS", requires = "rate_peak")]
    rate_committed: Option<u64>,
    /// Peak rate, bits per second (with --rate-committed).
    #[arg(long, value_name = "BPS", requires = "rate_committed")]
    rate_peak: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum CouponCmd {
    /// Add a coupon binding row by hand.
    Add(CouponRow),
    /// Replace the coupon with this --id.
    Update(CouponRow),
    /// Remove a coupon binding row.
    Remove {
        #[arg(long)]
        id: String,
    },
    #[command(flatten)]
    Signed(signed::SignedCmd),
}

#[derive(Args, Debug)]
struct CouponRow {
    /// The coupon's id (its key).
    #[arg(long)]
    id: String,
    /// The subscriber's address.
    #[arg(long, value_name = "IP")]
    subscriber: IpAddr,
    /// Only traffic to this prefix.
    #[arg(long, value_name = "PREFIX", value_parser = prefix)]
    dst: Option<Prefix>,
    /// Only TCP/UDP traffic to this port.
    #[arg(long, value_parser = port())]
    port: Option<u16>,
    #[command(flatten)]
    decision: DecisionArgs,
    /// Expiry, Unix seconds.
    #[arg(long, value_name = "UNIX")]
    expires: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum LoginCmd {
    /// Bind a subscriber address to a login and tier.
    Add(LoginRow),
    /// Replace the binding of this --subscriber.
    Update(LoginRow),
    /// Remove the binding of a subscriber address.
    Remove {
        #[arg(long, value_name = "IP")]
        subscriber: IpAddr,
    },
}

#[derive(Args, Debug)]
struct LoginRow {
    /// The subscriber's address (the key).
    #[arg(long, value_name = "IP")]
    subscriber: IpAddr,
    /// The customer's login name.
    #[arg(long, value_name = "NAME")]
    login: String,
    /// The tier whose decision applies; it must exist.
    #[arg(long, value_name = "NAME")]
    tier: String,
}

#[derive(Subcommand, Debug)]
enum TierCmd {
    /// Add a tier.
    Add(TierRow),
    /// Replace the tier with this --name.
    Update(TierRow),
    /// Remove a tier (no login may use it).
    Remove {
        #[arg(long)]
        name: String,
    },
}

#[derive(Args, Debug)]
struct TierRow {
    /// The tier's name (its key).
    #[arg(long)]
    name: String,
    #[command(flatten)]
    decision: DecisionArgs,
}

#[derive(Subcommand, Debug)]
enum SpCmd {
    /// Add an allocation.
    Add(SpRow),
    /// Replace the allocation with this --id.
    Update(SpRow),
    /// Remove an allocation.
    Remove {
        #[arg(long)]
        id: String,
    },
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).args(["ip", "prefix"])))]
struct SpRow {
    /// The allocation's id (its key).
    #[arg(long)]
    id: String,
    /// The service provider's name.
    #[arg(long, value_name = "NAME")]
    provider: String,
    /// The provider's address (a per-IP allocation).
    #[arg(long, value_name = "IP")]
    ip: Option<IpAddr>,
    /// The provider's prefix (a per-SP allocation).
    #[arg(long, value_name = "PREFIX", value_parser = prefix)]
    prefix: Option<Prefix>,
    /// Only TCP/UDP traffic to this port.
    #[arg(long, value_parser = port())]
    port: Option<u16>,
    #[command(flatten)]
    decision: DecisionArgs,
}

#[derive(Subcommand, Debug)]
enum EligibilityCmd {
    /// Make a destination eligible.
    Add(EligibilityRow),
    /// Remove an eligibility rule.
    Remove(EligibilityRow),
}

#[derive(Args, Debug)]
struct EligibilityRow {
    /// The destination prefix (no host bits set).
    #[arg(long, value_name = "PREFIX", value_parser = prefix)]
    dst: Prefix,
    /// Only TCP/UDP traffic to this port.
    #[arg(long, value_parser = port())]
    port: Option<u16>,
}

#[derive(Subcommand, Debug)]
enum DefaultCmd {
    /// Set the default decision (it cannot rewrite the address).
    Set(DecisionArgs),
}

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s:?} is not a number of seconds >= 0"))
}

fn prefix(s: &str) -> Result<Prefix, String> {
    s.parse::<Prefix>().map_err(|e| e.reason)
}

fn port() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..)
}

// ---------------------------------------------------------------------------
// From arguments to requests
// ---------------------------------------------------------------------------

/// What a command does.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Send one request; `render` prints its answer.
    Call { request: Value, render: Render },
    List {
        table: Table,
        offset: Option<u64>,
        limit: Option<u64>,
        all: bool,
    },
    Import {
        table: Table,
        file: PathBuf,
        batch: usize,
        quiet: bool,
        check: bool,
    },
    /// A signed-coupon command.
    Signed(signed::SignedPlan),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    Applied,
    Entry(Table),
    Stats,
    Tables,
}

fn decision(d: &DecisionArgs) -> DecisionSpec {
    DecisionSpec {
        level: d.level,
        dscp: d.dscp,
        dst_port: d.remap_port.map(u64::from),
        dst_addr: d.remap_ip.map(|a| a.to_string()),
        mss_clamp: d.mss.map(u64::from),
        rate: match (d.rate_committed, d.rate_peak) {
            (Some(committed_bps), Some(peak_bps)) => Some(RateSpec {
                committed_bps,
                peak_bps,
            }),
            // clap requires both or neither.
            _ => None,
        },
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> anyhow::Result<Value> {
    serde_json::to_value(v).context("cannot encode the request")
}

fn coupon(r: &CouponRow) -> anyhow::Result<Value> {
    to_json(&CouponSpec {
        id: r.id.clone(),
        subscriber: r.subscriber.to_string(),
        dst: r.dst.map(|p| p.to_string()),
        port: r.port.map(u64::from),
        decision: decision(&r.decision),
        expires: r.expires,
    })
}

fn login(r: &LoginRow) -> anyhow::Result<Value> {
    to_json(&LoginSpec {
        subscriber: r.subscriber.to_string(),
        login: r.login.clone(),
        tier: r.tier.clone(),
    })
}

fn tier(r: &TierRow) -> anyhow::Result<Value> {
    to_json(&TierSpec {
        name: r.name.clone(),
        decision: decision(&r.decision),
    })
}

fn sp(r: &SpRow) -> anyhow::Result<Value> {
    to_json(&SpSpec {
        id: r.id.clone(),
        provider: r.provider.clone(),
        ip: r.ip.map(|a| a.to_string()),
        prefix: r.prefix.map(|p| p.to_string()),
        port: r.port.map(u64::from),
        decision: decision(&r.decision),
    })
}

fn eligibility(r: &EligibilityRow) -> anyhow::Result<Value> {
    to_json(&EligibilitySpec {
        dst: r.dst.to_string(),
        port: r.port.map(u64::from),
    })
}

fn key_of(f: &KeyFlags) -> Option<KeySpec> {
    let k = KeySpec {
        id: f.id.clone(),
        subscriber: f.subscriber.map(|a| a.to_string()),
        name: f.name.clone(),
        dst: f.dst.map(|p| p.to_string()),
        port: f.port.map(u64::from),
    };
    (k != KeySpec::default()).then_some(k)
}

/// The keys named by positional arguments or, failing those, by flags.
fn keys(table: Table, args: &[String], flags: &KeyFlags) -> anyhow::Result<Vec<Value>> {
    if args.is_empty() {
        return key_of(flags).map(|k| to_json(&k)).into_iter().collect();
    }
    args.iter()
        .map(|a| Ok(client::key_arg(table, a, flags.port)?))
        .collect()
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
    } else {
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(text)
}

fn entries(rows: &Rows) -> anyhow::Result<Vec<Value>> {
    match &rows.file {
        Some(path) => Ok(client::json_values(
            &read_input(path)?,
            &path.display().to_string(),
        )?),
        None => {
            let mut out = Vec::new();
            for (i, text) in rows.entries.iter().enumerate() {
                out.extend(client::json_values(text, &format!("argument {}", i + 1))?);
            }
            Ok(out)
        }
    }
}

fn plan(command: &Command) -> anyhow::Result<Plan> {
    let apply = |request| Plan::Call {
        request,
        render: Render::Applied,
    };
    let add = |table, entry| apply(client::add(table, vec![entry]));
    let update = |table, entry| apply(client::update(table, vec![entry]));
    let remove = |table, key: KeySpec| -> anyhow::Result<Plan> {
        Ok(apply(client::remove(table, vec![to_json(&key)?])))
    };
    Ok(match command {
        Command::Add(rows) => apply(client::add(rows.table, entries(rows)?)),
        Command::Update(rows) => apply(client::update(rows.table, entries(rows)?)),
        Command::Remove(k) => {
            let keys = keys(k.table, &k.keys, &k.flags)?;
            if keys.is_empty() {
                bail!("name the keys to remove: as arguments, or with --id, --subscriber, --name or --dst");
            }
            apply(client::remove(k.table, keys))
        }
        Command::Batch { file } => apply(client::batch_request(
            &read_input(file)?,
            &file.display().to_string(),
        )?),
        Command::Get(g) => Plan::Call {
            request: client::get(g.table, keys(g.table, &g.keys, &g.flags)?.pop()),
            render: Render::Entry(g.table),
        },
        Command::List(l) => Plan::List {
            table: l.table,
            offset: l.offset,
            limit: l.limit,
            all: l.all,
        },
        Command::Stats => Plan::Call {
            request: client::stats(),
            render: Render::Stats,
        },
        Command::Tables => Plan::Call {
            request: client::tables(),
            render: Render::Tables,
        },
        Command::Import(i) => Plan::Import {
            table: i.table,
            file: i.file.clone(),
            batch: usize::try_from(i.batch).unwrap_or(usize::MAX),
            quiet: i.quiet,
            check: i.check,
        },
        Command::Coupon(c) => match c {
            CouponCmd::Add(r) => add(Table::Coupon, coupon(r)?),
            CouponCmd::Update(r) => update(Table::Coupon, coupon(r)?),
            CouponCmd::Remove { id } => remove(
                Table::Coupon,
                KeySpec {
                    id: Some(id.clone()),
                    ..KeySpec::default()
                },
            )?,
            CouponCmd::Signed(s) => Plan::Signed(signed::plan(s)?),
        },
        Command::Login(c) => match c {
            LoginCmd::Add(r) => add(Table::Login, login(r)?),
            LoginCmd::Update(r) => update(Table::Login, login(r)?),
            LoginCmd::Remove { subscriber } => remove(
                Table::Login,
                KeySpec {
                    subscriber: Some(subscriber.to_string()),
                    ..KeySpec::default()
                },
            )?,
        },
        Command::Tier(c) => match c {
            TierCmd::Add(r) => add(Table::Tier, tier(r)?),
            TierCmd::Update(r) => update(Table::Tier, tier(r)?),
            TierCmd::Remove { name } => remove(
                Table::Tier,
                KeySpec {
                    name: Some(name.clone()),
                    ..KeySpec::default()
                },
            )?,
        },
        Command::Sp(c) => match c {
            SpCmd::Add(r) => add(Table::Sp, sp(r)?),
            SpCmd::Update(r) => update(Table::Sp, sp(r)?),
            SpCmd::Remove { id } => remove(
                Table::Sp,
                KeySpec {
                    id: Some(id.clone()),
                    ..KeySpec::default()
                },
            )?,
        },
        Command::Eligibility(c) => match c {
            EligibilityCmd::Add(r) => add(Table::Eligibility, eligibility(r)?),
            // The whole rule is its key.
            EligibilityCmd::Remove(r) => {
                apply(client::remove(Table::Eligibility, vec![eligibility(r)?]))
            }
        },
        Command::Default(DefaultCmd::Set(d)) => update(Table::Default, to_json(&decision(d))?),
    })
}

// ---------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // An import's report is several lines: the first is the error.
            let text = format!("{e:#}");
            let mut lines = text.lines();
            eprintln!("error: {}", lines.next().unwrap_or_default());
            for l in lines {
                eprintln!("note: {l}");
            }
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match plan(&cli.command)? {
        Plan::Call { request, render } => {
            // Checked before connecting: a bad value needs no appliance.
            let line = client::checked_line(&request).map_err(|e| json_error(cli, e))?;
            let reply = connect(cli)?
                .call_line(&line)
                .map_err(|e| json_error(cli, e))?;
            if cli.json {
                println!("{}", reply.line);
                return Ok(());
            }
            let v = &reply.value;
            print!(
                "{}",
                match render {
                    Render::Applied => client::render_applied(v),
                    Render::Entry(table) => client::render_entry(table, v),
                    Render::Stats => client::render_stats(v),
                    Render::Tables => client::render_tables(v),
                }
            );
            Ok(())
        }
        Plan::List {
            table,
            offset,
            limit,
            all,
        } => list(cli, table, offset, limit, all),
        Plan::Import {
            table,
            file,
            batch,
            quiet,
            check,
        } => import(cli, table, &file, batch, quiet, check),
        Plan::Signed(p) => {
            let line = p.request.to_string();
            let reply = connect(cli)?
                .call_line(&line)
                .map_err(|e| json_error(cli, e))?;
            let text = signed::finish(&p, &reply.value)?;
            if cli.json {
                println!("{}", reply.line);
            } else {
                print!("{text}");
            }
            Ok(())
        }
    }
}

fn connect(cli: &Cli) -> Result<Client, ClientError> {
    Client::connect(&cli.socket, Some(cli.timeout))
}

/// With `--json`, a refused request still prints its response line.
fn json_error(cli: &Cli, e: ClientError) -> ClientError {
    if cli.json {
        if let Some(line) = e.response_line() {
            println!("{line}");
        }
    }
    e
}

fn list(
    cli: &Cli,
    table: Table,
    offset: Option<u64>,
    limit: Option<u64>,
    all: bool,
) -> anyhow::Result<()> {
    let request = client::list(table, offset, limit);
    let line = client::checked_line(&request).map_err(|e| json_error(cli, e))?;
    let mut c = connect(cli)?;
    let entries_of = |v: &Value| -> Vec<Value> {
        v.get("entries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    if all {
        let mut rows = Vec::new();
        let mut total = 0;
        client::list_pages(
            &mut c,
            table,
            offset.unwrap_or(0),
            MAX_LIST_LIMIT as u64,
            |page| {
                if cli.json {
                    println!("{}", page.line);
                } else {
                    rows.extend(entries_of(&page.value));
                    total = page.value.get("total").and_then(Value::as_u64).unwrap_or(0);
                }
            },
        )
        .map_err(|e| json_error(cli, e))?;
        if !cli.json {
            print!("{}", client::render_list(table, &rows));
            if !rows.is_empty() {
                println!("{} of {total} rows", rows.len());
            }
        }
        return Ok(());
    }
    let reply = c.call_line(&line).map_err(|e| json_error(cli, e))?;
    if cli.json {
        println!("{}", reply.line);
        return Ok(());
    }
    let rows = entries_of(&reply.value);
    print!("{}", client::render_list(table, &rows));
    let total = reply
        .value
        .get("total")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let first = offset.unwrap_or(0);
    let shown = rows.len() as u64;
    if shown > 0 && shown < total {
        println!(
            "rows {}-{} of {total} (--offset and --limit page, --all lists every row)",
            first + 1,
            first + shown
        );
    }
    Ok(())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows {msg} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn import(
    cli: &Cli,
    table: Table,
    path: &Path,
    batch: usize,
    quiet: bool,
    check_only: bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let open = || File::open(path).map(BufReader::new);
    let name = path.display().to_string();
    let input = open().with_context(|| format!("cannot read {name}"))?;
    // Fail fast when the appliance is not there, before a long check.
    let mut c = if check_only {
        None
    } else {
        Some(connect(cli)?)
    };
    let show = !quiet && io::stderr().is_terminal();
    let progress = |len: Option<u64>| match (show, len) {
        (false, _) => ProgressBar::hidden(),
        (true, None) => ProgressBar::new_spinner(),
        (true, Some(n)) => ProgressBar::new(n).with_style(bar_style()),
    };

    // Pass 1: every row is checked before anything is sent.
    let spinner = progress(None);
    spinner.set_message(format!("checking {name}"));
    let checked = check_csv(table, input, |n| {
        spinner.set_message(format!("checking {name}: {n} rows"));
        spinner.tick();
    });
    spinner.finish_and_clear();
    let rows = checked.map_err(|e| {
        anyhow::Error::new(ImportError {
            committed_rows: 0,
            committed_through: None,
            failure: ImportFailure::Csv(e),
        })
        .context(name.clone())
    })?;

    let Some(c) = c.as_mut() else {
        println!("{name}: {rows} rows, all valid for table {table}");
        return Ok(());
    };

    // Pass 2: send it, a batch at a time.
    let bar = progress(Some(rows));
    let sending = Instant::now();
    let sent = send_csv(c, table, open, batch, MAX_LINE_BYTES, |done| {
        if cli.json {
            bar.suspend(|| println!("{}", done.reply.line));
        }
        bar.set_position(done.total_rows);
        let secs = sending.elapsed().as_secs_f64();
        if secs > 0.0 {
            bar.set_message(format!("{:.0} rows/s", done.total_rows as f64 / secs));
        }
    });
    bar.finish_and_clear();
    let report = match sent {
        Ok(r) => r,
        Err(e) => {
            if cli.json {
                if let ImportFailure::Refused {
                    response: Some(line),
                    ..
                } = &e.failure
                {
                    println!("{line}");
                }
            }
            return Err(anyhow::Error::new(*e).context(name));
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let summary = format!(
        "imported {} rows into {table} in {secs:.2} s ({:.0} rows/s, {} requests)",
        report.rows,
        report.rows as f64 / secs.max(1e-9),
        report.batches
    );
    if cli.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_control::policy::protocol::parse_request;

    fn plan_of(args: &[&str]) -> Plan {
        let cli = Cli::try_parse_from(std::iter::once("sluicectl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        plan(&cli.command).unwrap_or_else(|e| panic!("{args:?}: {e:#}"))
    }

    /// The request a command sends; it must be one the appliance accepts.
    fn request_of(args: &[&str]) -> Value {
        match plan_of(args) {
            Plan::Call { request, .. } => {
                let line = request.to_string();
                parse_request(&line).unwrap_or_else(|e| panic!("{args:?}: {line}: {e}"));
                request
            }
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        Cli::try_parse_from(std::iter::once("sluicectl").chain(args.iter().copied()))
            .expect_err(&format!("{args:?}"))
    }

    #[test]
    fn coupon_issue_flags_build_valid_signed_claims_and_a_bundle_plan() {
        let p = match plan_of(&[
            "coupon",
            "issue",
            "--id",
            "c-9",
            "--customer",
            "alice",
            "--level",
            "3",
            "--remap-port",
            "8080",
            "--dscp",
            "46",
            "--prefix",
            "203.0.113.10/32",
            "--port",
            "80",
            "--window",
            "mon-fri 18:00-23:00",
            "--not-before",
            "1795392000",
            "--valid-for",
            "86400",
            "--rate-committed",
            "1000000",
            "--rate-peak",
            "2000000",
        ]) {
            Plan::Signed(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(p.request["op"], "coupon_issue");
        let c: sluice_coupon::Claims =
            serde_json::from_value(p.request["claims"].clone()).expect("valid claims");
        assert_eq!((c.id.as_str(), c.level, c.expires), ("c-9", 3, 1795478400));
        assert_eq!((c.port(), c.dscp()), (Some(8080), Some(46)));
        assert_eq!(c.windows.len(), 1);
        // A holder key was made here; its secret goes into the bundle.
        let (secret, out) = p.bundle.expect("issue writes a bundle");
        assert!(secret.is_some_and(|s| s.starts_with("k4.secret.")));
        assert_eq!(out, std::path::PathBuf::from("c-9.coupon.json"));
        // A coupon without a mode is refused before anything is sent.
        let cli = Cli::try_parse_from([
            "sluicectl",
            "coupon",
            "issue",
            "--customer",
            "a",
            "--level",
            "3",
        ])
        .unwrap();
        assert!(plan(&cli.command).is_err());
        for (args, op) in [
            (&["coupon", "revoke", "--id", "c-9"][..], "coupon_revoke"),
            (&["coupon", "list"][..], "coupon_list"),
            (&["coupon", "show", "--id", "c-9"][..], "coupon_get"),
            (&["coupon", "keygen"][..], "coupon_keygen"),
            (&["coupon", "stats"][..], "coupon_stats"),
            (
                &[
                    "coupon",
                    "redeem",
                    "--token",
                    "v4.public.x",
                    "--subscriber",
                    "10.0.0.1",
                ][..],
                "coupon_redeem",
            ),
        ] {
            match plan_of(args) {
                Plan::Signed(p) => assert_eq!(p.request["op"], op, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn typed_coupon_flags_build_the_documented_row() {
        let r = request_of(&[
            "coupon",
            "add",
            "--id",
            "cp-1",
            "--subscriber",
            "10.0.0.8",
            "--level",
            "voice",
            "--dscp",
            "46",
            "--dst",
            "203.0.113.0/24",
            "--port",
            "443",
            "--remap-port",
            "8443",
            "--remap-ip",
            "198.51.100.9",
            "--mss",
            "1400",
            "--rate-committed",
            "2000000",
            "--rate-peak",
            "4000000",
            "--expires",
            "1767225600",
        ]);
        assert_eq!(
            r,
            json!({"op":"add","table":"coupon","entries":[{
                "id":"cp-1","subscriber":"10.0.0.8","dst":"203.0.113.0/24","port":443,
                "decision":{"level":"voice","dscp":46,"dst_port":8443,"dst_addr":"198.51.100.9",
                    "mss_clamp":1400,"rate":{"committed_bps":2000000,"peak_bps":4000000}},
                "expires":1767225600}]})
        );
        let r = request_of(&[
            "coupon",
            "update",
            "--id",
            "cp-1",
            "--subscriber",
            "2001:db8::8",
            "--level",
            "3",
        ]);
        assert_eq!(
            r,
            json!({"op":"update","table":"coupon","entries":[{"id":"cp-1","subscriber":"2001:db8::8","decision":{"level":"premium"}}]})
        );
        assert_eq!(
            request_of(&["coupon", "remove", "--id", "cp-1"]),
            json!({"op":"remove","table":"coupon","keys":[{"id":"cp-1"}]})
        );
    }

    #[test]
    fn every_typed_command_builds_a_request_the_appliance_parses() {
        for (args, want) in [
            (
                &[
                    "login",
                    "add",
                    "--subscriber",
                    "10.0.0.7",
                    "--login",
                    "alice",
                    "--tier",
                    "gold",
                ][..],
                json!({"op":"add","table":"login","entries":[{"subscriber":"10.0.0.7","login":"alice","tier":"gold"}]}),
            ),
            (
                &["login", "remove", "--subscriber", "10.0.0.7"],
                json!({"op":"remove","table":"login","keys":[{"subscriber":"10.0.0.7"}]}),
            ),
            (
                &[
                    "tier", "add", "--name", "gold", "--level", "premium", "--dscp", "level",
                ],
                json!({"op":"add","table":"tier","entries":[{"name":"gold","decision":{"level":"premium","dscp":"level"}}]}),
            ),
            (
                &["tier", "update", "--name", "gold", "--level", "interactive"],
                json!({"op":"update","table":"tier","entries":[{"name":"gold","decision":{"level":"interactive"}}]}),
            ),
            (
                &["tier", "remove", "--name", "gold"],
                json!({"op":"remove","table":"tier","keys":[{"name":"gold"}]}),
            ),
            (
                &[
                    "sp",
                    "add",
                    "--id",
                    "sp-1",
                    "--provider",
                    "acme",
                    "--prefix",
                    "198.51.100.0/24",
                    "--level",
                    "2",
                    "--mss",
                    "1400",
                ],
                json!({"op":"add","table":"sp","entries":[{"id":"sp-1","provider":"acme","prefix":"198.51.100.0/24","decision":{"level":"interactive","mss_clamp":1400}}]}),
            ),
            (
                &[
                    "sp",
                    "add",
                    "--id",
                    "sp-2",
                    "--provider",
                    "acme",
                    "--ip",
                    "192.0.2.1",
                    "--port",
                    "5060",
                    "--level",
                    "voice",
                ],
                json!({"op":"add","table":"sp","entries":[{"id":"sp-2","provider":"acme","ip":"192.0.2.1","port":5060,"decision":{"level":"voice"}}]}),
            ),
            (
                &["sp", "remove", "--id", "sp-1"],
                json!({"op":"remove","table":"sp","keys":[{"id":"sp-1"}]}),
            ),
            (
                &["eligibility", "add", "--dst", "0.0.0.0/0", "--port", "5060"],
                json!({"op":"add","table":"eligibility","entries":[{"dst":"0.0.0.0/0","port":5060}]}),
            ),
            (
                &["eligibility", "remove", "--dst", "203.0.113.0/24"],
                json!({"op":"remove","table":"eligibility","keys":[{"dst":"203.0.113.0/24"}]}),
            ),
            (
                &["default", "set", "--level", "best-effort", "--dscp", "0"],
                json!({"op":"update","table":"default","entries":[{"level":"best-effort","dscp":0}]}),
            ),
        ] {
            assert_eq!(request_of(args), want, "{args:?}");
        }
    }

    #[test]
    fn generic_commands_take_json_values_or_key_flags() {
        assert_eq!(
            request_of(&[
                "add",
                "tier",
                r#"{"name":"a","decision":{"level":1}}"#,
                r#"[{"name":"b","decision":{"level":2}}]"#
            ]),
            json!({"op":"add","table":"tier","entries":[{"name":"a","decision":{"level":1}},{"name":"b","decision":{"level":2}}]})
        );
        assert_eq!(
            request_of(&["update", "default", r#"{"level":"bulk"}"#]),
            json!({"op":"update","table":"default","entries":[{"level":"bulk"}]})
        );
        assert_eq!(
            request_of(&["remove", "coupon", "cp-1", r#"{"id":"cp-2"}"#]),
            json!({"op":"remove","table":"coupon","keys":[{"id":"cp-1"},{"id":"cp-2"}]})
        );
        assert_eq!(
            request_of(&[
                "remove",
                "eligibility",
                "--dst",
                "0.0.0.0/0",
                "--port",
                "5060"
            ]),
            json!({"op":"remove","table":"eligibility","keys":[{"dst":"0.0.0.0/0","port":5060}]})
        );
        assert_eq!(
            request_of(&["remove", "eligibility", "10.0.0.0/8", "--port", "53"]),
            json!({"op":"remove","table":"eligibility","keys":[{"dst":"10.0.0.0/8","port":53}]})
        );
        assert_eq!(
            request_of(&["get", "login", "10.0.0.7"]),
            json!({"op":"get","table":"login","key":{"subscriber":"10.0.0.7"}})
        );
        assert_eq!(
            request_of(&["get", "tier", "--name", "gold"]),
            json!({"op":"get","table":"tier","key":{"name":"gold"}})
        );
        assert_eq!(
            request_of(&["get", "default"]),
            json!({"op":"get","table":"default"})
        );
        assert_eq!(request_of(&["stats"]), json!({"op":"stats"}));
        assert_eq!(request_of(&["tables", "--json"]), json!({"op":"tables"}));
        assert_eq!(
            plan_of(&["list", "coupon", "--offset", "10", "--limit", "5"]),
            Plan::List {
                table: Table::Coupon,
                offset: Some(10),
                limit: Some(5),
                all: false
            }
        );
        assert_eq!(
            plan_of(&["import", "login", "l.csv", "--batch", "500", "-q"]),
            Plan::Import {
                table: Table::Login,
                file: "l.csv".into(),
                batch: 500,
                quiet: true,
                check: false,
            }
        );
    }

    #[test]
    fn a_batch_file_is_the_request_or_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let changes = r#"{"op":"add","table":"tier","entry":{"name":"s","decision":{"level":4}}}
{"op":"remove","table":"tier","key":{"name":"g"}}"#;
        let whole = format!(
            r#"{{"op":"batch","changes":[{}]}}"#,
            changes.replace('\n', ",")
        );
        for text in [changes.to_string(), whole] {
            let f = dir.path().join("b.json");
            std::fs::write(&f, text).unwrap();
            let r = request_of(&["batch", "--file", f.to_str().unwrap()]);
            assert_eq!(r["changes"].as_array().map(Vec::len), Some(2), "{r}");
        }
    }

    #[test]
    fn bad_flag_values_are_usage_errors() {
        let e = usage_error(&[
            "coupon",
            "add",
            "--id",
            "c",
            "--subscriber",
            "10.0.0.300",
            "--level",
            "1",
        ]);
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("10.0.0.300"), "{e}");
        let e = usage_error(&["tier", "add", "--name", "g", "--level", "8"]);
        assert!(e.to_string().contains("level 8"), "{e}");
        let e = usage_error(&["tier", "add", "--name", "g", "--level", "1", "--dscp", "64"]);
        assert!(e.to_string().contains("0..=63"), "{e}");
        let e = usage_error(&["eligibility", "add", "--dst", "10.1.0.0/8"]);
        assert!(e.to_string().contains("host bits"), "{e}");
        let e = usage_error(&[
            "tier",
            "add",
            "--name",
            "g",
            "--level",
            "1",
            "--rate-committed",
            "5",
        ]);
        assert!(e.to_string().contains("--rate-peak"), "{e}");
        let e = usage_error(&["tier", "add", "--name", "g", "--level", "1", "--mss", "100"]);
        assert!(e.to_string().contains("100"), "{e}");
        usage_error(&["sp", "add", "--id", "s", "--provider", "p", "--level", "1"]);
        usage_error(&[
            "sp",
            "add",
            "--id",
            "s",
            "--provider",
            "p",
            "--level",
            "1",
            "--ip",
            "192.0.2.1",
            "--prefix",
            "192.0.2.0/24",
        ]);
        usage_error(&[
            "coupon",
            "add",
            "--id",
            "c",
            "--subscriber",
            "10.0.0.1",
            "--level",
            "1",
            "--port",
            "0",
        ]);
        usage_error(&["list", "coupons"]);
        usage_error(&["list", "coupon", "--all", "--limit", "5"]);
        usage_error(&["add", "tier"]);
        usage_error(&["import", "coupon", "c.csv", "--batch", "0"]);
        usage_error(&["stats", "--timeout", "-1"]);
    }

    #[test]
    fn values_the_flags_cannot_check_are_refused_before_sending() {
        // A valid flag value, but an invalid request: the appliance's own
        // parser says so, locally.
        let Plan::Call { request, .. } = plan_of(&[
            "tier",
            "add",
            "--name",
            "g",
            "--level",
            "1",
            "--rate-committed",
            "10",
            "--rate-peak",
            "5",
        ]) else {
            panic!()
        };
        match client::checked_line(&request) {
            Err(ClientError::Refused {
                error,
                response: None,
            }) => {
                assert_eq!(error.field, "entries[0].decision.rate.peak_bps");
            }
            other => panic!("{other:?}"),
        }
        let Plan::Call { request, .. } = plan_of(&["get", "login", "10.0.0.300"]) else {
            panic!()
        };
        let e = client::checked_line(&request).unwrap_err();
        assert!(
            e.to_string().starts_with("key.subscriber: bad IP address"),
            "{e}"
        );
        let Plan::Call { request, .. } =
            plan_of(&["default", "set", "--level", "1", "--remap-ip", "192.0.2.1"])
        else {
            panic!()
        };
        assert!(client::checked_line(&request).is_err());
    }
}
