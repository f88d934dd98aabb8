//! `sluicectl coupon keygen|keys|issue|revoke|list|show|redeem|stats`:
//! signed priority coupons (the `coupon add|update|remove` commands edit
//! raw coupon binding rows instead).
//!
//! The issuer's keys live with the appliance (`coupons.keys_dir`), which
//! signs and records what it issues; `issue` writes the install bundle for
//! the customer's `sluice-client`. Unless the customer's own holder key is
//! given (`--holder`, from `sluice-client keygen`), a holder key pair is
//! made here and its secret travels in the bundle (written 0600).
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde_json::{json, Value};
use sluice_coupon::time::{format_utc, now_unix};
use sluice_coupon::{Bundle, HolderKey};

/// Signed-coupon commands.
#[derive(Subcommand, Debug)]
pub enum SignedCmd {
    /// Make a new issuer key (the newest key signs; every key verifies, so
    /// coupons signed by older keys stay valid).
    Keygen,
    /// List the issuer keys.
    Keys,
    /// Sign a coupon and write its install bundle.
    Issue(Box<IssueArgs>),
    /// Revoke a coupon: it grants nothing from now on, and its bindings go.
    Revoke {
        #[arg(long)]
        id: String,
    },
    /// List signed coupons with their state and redemptions.
    List {
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: usize,
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
    },
    /// Show one signed coupon.
    Show {
        #[arg(long)]
        id: String,
    },
    /// Redeem a coupon for a subscriber address (a web form or an IVR front
    /// end that authenticated the user; no proof of possession).
    Redeem {
        /// The install bundle, or --token.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "token",
            required_unless_present = "token"
        )]
        bundle: Option<PathBuf>,
        /// The coupon token (v4.public...).
        #[arg(long)]
        token: Option<String>,
        #[arg(long, value_name = "IP")]
        subscriber: IpAddr,
    },
    /// Coupon counters: grants, refusals by reason, DNS learned.
    Stats,
}

/// `coupon issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Coupon id (default: a random one).
    #[arg(long)]
    pub id: Option<String>,
    /// The customer it is issued to.
    #[arg(long)]
    pub customer: String,
    /// Priority level, 0..=7 (0 network control, 1 voice, 2 interactive,
    /// 3 premium, 4 standard, 5 best effort, 6 bulk, 7 scavenger).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=7))]
    pub level: u8,
    /// Mode: remap the destination port to PORT (the port serving the level).
    #[arg(long, value_name = "PORT")]
    pub remap_port: Option<u16>,
    /// Mode: remap the destination address to IP (a priority endpoint).
    #[arg(long, value_name = "IP")]
    pub remap_ip: Option<IpAddr>,
    /// Mode: mark DSCP (0..=63).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=63))]
    pub dscp: Option<u8>,
    /// Scope: hostnames (`cdn.example`, `*.video.example`); repeatable.
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Scope: destination prefixes; repeatable.
    #[arg(long = "prefix", value_name = "PREFIX")]
    pub prefixes: Vec<IpNet>,
    /// Scope: destination ports; repeatable.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Value basis: customer, content, transaction or temporal.
    #[arg(long, default_value = "customer")]
    pub basis: String,
    /// The value it was granted for, in minor currency units.
    #[arg(long, default_value_t = 0)]
    pub amount: u64,
    #[arg(long)]
    pub note: Option<String>,
    /// Valid from (Unix seconds; default now).
    #[arg(long, value_name = "UNIX")]
    pub not_before: Option<u64>,
    /// Valid for this many seconds from not-before (default 30 days).
    #[arg(long, value_name = "SECS", default_value_t = 30 * 86400)]
    pub valid_for: u64,
    /// Weekly UTC window, e.g. "mon-fri 18:00-23:00"; repeatable.
    #[arg(long = "window", value_name = "WINDOW")]
    pub windows: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub max_redemptions: u32,
    /// Rate allocation, committed bits/s (with --rate-peak).
    #[arg(long, value_name = "BPS", requires = "rate_peak")]
    pub rate_committed: Option<u64>,
    #[arg(long, value_name = "BPS", requires = "rate_committed")]
    pub rate_peak: Option<u64>,
    /// The holder's public key (PASERK k4.public, from `sluice-client
    /// keygen`); default: a new key pair whose secret goes in the bundle.
    #[arg(long, value_name = "PASERK")]
    pub holder: Option<String>,
    /// Where to write the install bundle (default: <id>.coupon.json).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// What a signed-coupon command sends, and what it does with the answer.
#[derive(Debug, PartialEq)]
pub struct SignedPlan {
    pub request: Value,
    /// `issue`: the holder secret for the bundle, and the bundle's path.
    pub bundle: Option<(Option<String>, PathBuf)>,
}

fn random_id() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random source");
    format!(
        "c-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Builds the request (checked here as far as it can be, the appliance
/// checks it again).
pub fn plan(cmd: &SignedCmd) -> anyhow::Result<SignedPlan> {
    let plain = |request| SignedPlan {
        request,
        bundle: None,
    };
    Ok(match cmd {
        SignedCmd::Keygen => plain(json!({"op": "coupon_keygen"})),
        SignedCmd::Keys => plain(json!({"op": "coupon_keys"})),
        SignedCmd::Revoke { id } => plain(json!({"op": "coupon_revoke", "id": id})),
        SignedCmd::List { offset, limit } => {
            plain(json!({"op": "coupon_list", "offset": offset, "limit": limit}))
        }
        SignedCmd::Show { id } => plain(json!({"op": "coupon_get", "id": id})),
        SignedCmd::Stats => plain(json!({"op": "coupon_stats"})),
        SignedCmd::Redeem {
            bundle,
            token,
            subscriber,
        } => {
            let token = match (bundle, token) {
                (Some(p), _) => {
                    Bundle::read(p)
                        .with_context(|| format!("cannot read bundle {}", p.display()))?
                        .token
                }
                (None, Some(t)) => t.clone(),
                (None, None) => bail!("give --bundle or --token"),
            };
            plain(
                json!({"op": "coupon_redeem", "token": token, "subscriber": subscriber.to_string()}),
            )
        }
        SignedCmd::Issue(a) => {
            let id = a.id.clone().unwrap_or_else(random_id);
            let (holder_public, holder_secret) = match &a.holder {
                Some(p) => (p.clone(), None),
                None => {
                    let k = HolderKey::generate().context("cannot make a holder key")?;
                    (k.public_paserk(), Some(k.secret_paserk()))
                }
            };
            let mut modes = Vec::new();
            if let Some(p) = a.remap_port {
                modes.push(json!({"port": p}));
            }
            if let Some(ip) = a.remap_ip {
                modes.push(json!({"addr": ip}));
            }
            if let Some(d) = a.dscp {
                modes.push(json!({"dscp": d}));
            }
            if modes.is_empty() {
                bail!("a coupon needs a mode: --remap-port, --remap-ip and/or --dscp");
            }
            let not_before = a.not_before.unwrap_or_else(now_unix);
            let mut claims = json!({
                "id": id,
                "customer": a.customer,
                "level": a.level,
                "modes": modes,
                "scope": {"hosts": a.hosts, "prefixes": a.prefixes, "ports": a.ports},
                "basis": {"kind": a.basis, "amount": a.amount},
                "not_before": not_before,
                "expires": not_before.saturating_add(a.valid_for),
                "windows": a.windows,
                "max_redemptions": a.max_redemptions,
                "holder": holder_public,
            });
            if let Some(n) = &a.note {
                claims["basis"]["note"] = json!(n);
            }
            if let (Some(c), Some(p)) = (a.rate_committed, a.rate_peak) {
                claims["rate"] = json!({"committed_bps": c, "peak_bps": p});
            }
            // Checked here first: a bad flag needs no appliance.
            serde_json::from_value::<sluice_coupon::Claims>(claims.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let out = a
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{id}.coupon.json")));
            SignedPlan {
                request: json!({"op": "coupon_issue", "claims": claims}),
                bundle: Some((holder_secret, out)),
            }
        }
    })
}

/// After a successful answer: writes the bundle of an `issue`; returns
/// the human text.
pub fn finish(p: &SignedPlan, v: &Value) -> anyhow::Result<String> {
    if let Some((secret, out)) = &p.bundle {
        let b = Bundle {
            token: v["token"].as_str().unwrap_or_default().to_owned(),
            holder_secret: secret.clone(),
            id: v["id"].as_str().unwrap_or_default().to_owned(),
        };
        b.write(out)
            .with_context(|| format!("cannot write bundle {}", out.display()))?;
        return Ok(format!(
            "issued coupon {} (key {})\ninstall bundle: {} (give it to the customer: sluice-client install {})\n",
            b.id,
            v["kid"].as_str().unwrap_or_default(),
            out.display(),
            out.display()
        ));
    }
    Ok(render(&p.request["op"], v))
}

fn render(op: &Value, v: &Value) -> String {
    match op.as_str().unwrap_or_default() {
        "coupon_keygen" => format!("new issuer key {}\n", v["kid"].as_str().unwrap_or_default()),
        "coupon_keys" => {
            let mut s = String::from(
                "kid                                              created               signs\n",
            );
            for k in v["keys"].as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "{:<48} {:<21} {}\n",
                    k["kid"].as_str().unwrap_or_default(),
                    format_utc(k["created"].as_u64().unwrap_or(0)),
                    if k["can_sign"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no (public only)"
                    }
                ));
            }
            s
        }
        "coupon_revoke" => format!(
            "revoked {} ({} binding(s) removed)\n",
            v["id"].as_str().unwrap_or_default(),
            v["bindings_removed"]
        ),
        "coupon_list" => {
            let mut s = format!(
                "{:<20} {:<14} {:<16} {:<6} {:<28} {:>7} {:>8} {}\n",
                "id", "state", "customer", "level", "modes", "redeemed", "bindings", "expires"
            );
            for c in v["coupons"].as_array().into_iter().flatten() {
                s.push_str(&summary(c));
            }
            s.push_str(&format!("{} coupon(s)\n", v["total"]));
            s
        }
        "coupon_get" => {
            let c = &v["coupon"];
            let mut s = summary(c);
            for r in c["redemptions"].as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "  redeemed by {} at {} via {}\n",
                    r["subscriber"].as_str().unwrap_or_default(),
                    format_utc(r["at"].as_u64().unwrap_or(0)),
                    r["via"].as_str().unwrap_or_default()
                ));
            }
            s.push_str(&format!(
                "  scope {}  windows {}  basis {}\n",
                c["scope"], c["windows"], c["basis"]
            ));
            s
        }
        "coupon_redeem" => format!(
            "granted: coupon {} at level {} until {} ({} binding(s) now)\n",
            v["coupon"].as_str().unwrap_or_default(),
            v["level"],
            format_utc(v["until"].as_u64().unwrap_or(0)),
            v["bindings"]
        ),
        "coupon_stats" => {
            let c = &v["coupons"];
            let mut s = format!(
                "coupons {}  keys {}  issued {}  revoked {}  granted {}  regranted {}\nanswers sent {}  unsent {}  rate-limited {}  scope overflow {}  commit errors {}\n",
                c["coupons"], c["keys"], c["issued"], c["revoked"], c["granted"], c["regranted"],
                c["answers_sent"], c["answers_unsent"], c["rate_limited"], c["scope_overflow"], c["commit_errors"]
            );
            s.push_str("refused:");
            for (k, n) in c["refused"].as_object().into_iter().flatten() {
                s.push_str(&format!(" {k} {n}"));
            }
            s.push('\n');
            s.push_str(&format!("dns: {}\n", c["dns"]));
            s
        }
        _ => format!("{v}\n"),
    }
}

fn summary(c: &Value) -> String {
    let modes: Vec<String> = c["modes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m.to_string().replace(['{', '}', '"'], ""))
        .collect();
    format!(
        "{:<20} {:<14} {:<16} {:<6} {:<28} {:>4}/{:<3} {:>8} {}\n",
        c["id"].as_str().unwrap_or_default(),
        c["state"].as_str().unwrap_or_default(),
        c["customer"].as_str().unwrap_or("-"),
        c["level"],
        modes.join(","),
        c["redemptions"].as_array().map_or(0, Vec::len),
        c["max_redemptions"],
        c["bindings"],
        c["expires"].as_u64().map_or("-".into(), format_utc)
    )
}
