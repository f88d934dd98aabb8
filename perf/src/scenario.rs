//! The scenario registry: every benchmark the runner knows, including the
//! ones that wait for a feature of the appliance or a tool this machine
//! lacks, which must not be faked.
use crate::process::on_path;

/// A named benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    Forward,
    Sizes,
    QosSched,
    Parse,
    Classify,
    Rewrite,
    Police,
    Pipeline,
    Congestion,
    Updates,
    Control,
    Pktgen,
}

/// Whether a scenario can run with the appliance as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Not yet: names the feature it needs.
    NeedsFeature(&'static str),
    /// Not on this machine: says what is missing and where to read more.
    NotHere(&'static str),
}

/// Why the `pktgen` scenario does not run where Pktgen is not installed.
pub const PKTGEN_MISSING: &str = "pktgen not on PATH; see perf/README.md";

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::Forward,
        Scenario::Sizes,
        Scenario::QosSched,
        Scenario::Parse,
        Scenario::Classify,
        Scenario::Rewrite,
        Scenario::Police,
        Scenario::Pipeline,
        Scenario::Congestion,
        Scenario::Updates,
        Scenario::Control,
        Scenario::Pktgen,
    ];

    /// Old names that still select a scenario: `sched` was the full
    /// pipeline and the congestion run in one.
    pub const ALIASES: [(&'static str, Scenario); 1] = [("sched", Scenario::Pipeline)];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Forward => "forward",
            Scenario::Sizes => "sizes",
            Scenario::QosSched => "qos_sched",
            Scenario::Parse => "parse",
            Scenario::Classify => "classify",
            Scenario::Rewrite => "rewrite",
            Scenario::Police => "police",
            Scenario::Pipeline => "pipeline",
            Scenario::Congestion => "congestion",
            Scenario::Updates => "updates",
            Scenario::Control => "control",
            Scenario::Pktgen => "pktgen",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .or_else(|| Scenario::ALIASES.iter().find(|a| a.0 == name).map(|a| a.1))
    }

    pub fn about(self) -> &'static str {
        match self {
            Scenario::Forward => {
                "bare bridge, 64 B, one worker, two net_null ports; vs dpdk-testpmd macswap and io"
            }
            Scenario::Sizes => {
                "bare bridge at 64..1518 B, Mpps and wire Gbit/s vs testpmd; writes sizes.svg"
            }
            Scenario::QosSched => {
                "DPDK's qos_sched example (rte_sched) on net_null, if it can run here"
            }
            Scenario::Parse => {
                "parse + one rewrite + incremental checksum, 64 B TCP/IPv4, in process (ns/packet)"
            }
            Scenario::Classify => {
                "flow-table hit (bulk) and policy lookup at 1M+1M bindings and 4M flows, in process (cycles/packet), memory per binding"
            }
            Scenario::Rewrite => {
                "DSCP rule on every packet vs the bare bridge, net_pcap TCP corpus; testpmd io as reference"
            }
            Scenario::Police => "per-binding metering and policing",
            Scenario::Pipeline => {
                "full pipeline (1M+1M bindings, coupon/login/SP/default traffic, rewrites, meter, scheduler) vs testpmd macswap; rx->tx latency (alias: sched)"
            }
            Scenario::Congestion => {
                "full pipeline, upstream shaped to half its rate (2x oversubscribed): queueing delay p50/p99/p99.9 and Mbit/s per level; writes congestion.svg"
            }
            Scenario::Updates => {
                "update storm through the control socket during the full pipeline: forwarding loss, updates/s, ack -> effect"
            }
            Scenario::Control => {
                "the control path per binding update, by phase (parse, validate, journal, mirror), in process at 1M coupons"
            }
            Scenario::Pktgen => {
                "Sluice on memif driven by Pktgen-DPDK (64 B line rate command file), if pktgen is installed"
            }
        }
    }

    pub fn availability(self) -> Availability {
        use Availability::*;
        match self {
            Scenario::Forward | Scenario::Sizes | Scenario::QosSched => Available,
            Scenario::Parse
            | Scenario::Rewrite
            | Scenario::Classify
            | Scenario::Pipeline
            | Scenario::Congestion
            | Scenario::Updates
            | Scenario::Control => Available,
            Scenario::Police => NeedsFeature(
                "a scenario of its own (meters already run inside `pipeline`: every coupon flow is metered)",
            ),
            Scenario::Pktgen => pktgen_availability(on_path("pktgen")),
        }
    }

    /// One line for `--help` and `list`.
    pub fn help_line(self) -> String {
        match self.availability() {
            Availability::Available => format!("  {:<10} {}", self.name(), self.about()),
            Availability::NeedsFeature(f) => format!(
                "  {:<10} {} [not yet available: needs {f}]",
                self.name(),
                self.about()
            ),
            Availability::NotHere(why) => {
                format!("  {:<10} {} [not run: {why}]", self.name(), self.about())
            }
        }
    }
}

/// The `pktgen` scenario runs only where Pktgen-DPDK is installed.
pub fn pktgen_availability(found: bool) -> Availability {
    if found {
        Availability::Available
    } else {
        Availability::NotHere(PKTGEN_MISSING)
    }
}

/// Expands the names given on the command line (`all` = every scenario)
/// into scenarios in registry order, without duplicates.
pub fn resolve(names: &[String]) -> Result<Vec<Scenario>, String> {
    let mut out = Vec::new();
    for n in names {
        let add: Vec<Scenario> = if n == "all" {
            Scenario::ALL.to_vec()
        } else {
            vec![Scenario::from_name(n).ok_or_else(|| {
                format!(
                    "unknown scenario `{n}`; expected one of: all, {}",
                    Scenario::ALL.map(Scenario::name).join(", ")
                )
            })?]
        };
        for s in add {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out.sort_by_key(|s| Scenario::ALL.iter().position(|x| x == s));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(s));
        }
    }

    #[test]
    fn all_expands_in_order_without_duplicates() {
        let v = resolve(&["sizes".into(), "all".into(), "forward".into()]).unwrap();
        assert_eq!(v, Scenario::ALL.to_vec());
        let v = resolve(&["qos_sched".into(), "forward".into()]).unwrap();
        assert_eq!(v, [Scenario::Forward, Scenario::QosSched]);
    }

    #[test]
    fn unknown_names_are_rejected_with_the_choices() {
        let e = resolve(&["fwd".into()]).unwrap_err();
        assert!(e.contains("`fwd`") && e.contains("forward"), "{e}");
    }

    #[test]
    fn unavailable_scenarios_say_what_they_need() {
        assert_eq!(Scenario::Forward.availability(), Availability::Available);
        assert!(!Scenario::Parse.help_line().contains("not yet available"));
        let line = Scenario::Police.help_line();
        assert!(line.contains("not yet available: needs"), "{line}");
        assert_eq!(
            pktgen_availability(false),
            Availability::NotHere("pktgen not on PATH; see perf/README.md")
        );
        assert_eq!(pktgen_availability(true), Availability::Available);
    }

    #[test]
    fn the_old_sched_name_runs_the_pipeline() {
        assert_eq!(Scenario::from_name("sched"), Some(Scenario::Pipeline));
        let v = resolve(&["sched".into(), "pipeline".into()]).unwrap();
        assert_eq!(v, [Scenario::Pipeline]);
        assert_eq!(Scenario::from_name("latency"), None);
    }
}
