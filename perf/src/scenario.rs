//! The scenario registry: every benchmark the runner knows, including the
//! ones that wait for a feature of the appliance and must not be faked.

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
    Sched,
    Updates,
    Latency,
}

/// Whether a scenario can run with the appliance as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Not yet: names the feature it needs.
    NeedsFeature(&'static str),
}

impl Scenario {
    pub const ALL: [Scenario; 10] = [
        Scenario::Forward,
        Scenario::Sizes,
        Scenario::QosSched,
        Scenario::Parse,
        Scenario::Classify,
        Scenario::Rewrite,
        Scenario::Police,
        Scenario::Sched,
        Scenario::Updates,
        Scenario::Latency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Forward => "forward",
            Scenario::Sizes => "sizes",
            Scenario::QosSched => "qos_sched",
            Scenario::Parse => "parse",
            Scenario::Classify => "classify",
            Scenario::Rewrite => "rewrite",
            Scenario::Police => "police",
            Scenario::Sched => "sched",
            Scenario::Updates => "updates",
            Scenario::Latency => "latency",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
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
            Scenario::Sched => {
                "full pipeline (tables, rewrite, meter, scheduler) vs testpmd macswap; delays per level at 2x oversubscription"
            }
            Scenario::Updates => {
                "update storm through the control socket during the full pipeline: forwarding loss, updates/s, ack -> effect"
            }
            Scenario::Latency => "per-packet latency percentiles through the appliance",
        }
    }

    pub fn availability(self) -> Availability {
        use Availability::*;
        match self {
            Scenario::Forward | Scenario::Sizes | Scenario::QosSched => Available,
            Scenario::Parse
            | Scenario::Rewrite
            | Scenario::Classify
            | Scenario::Sched
            | Scenario::Updates => Available,
            Scenario::Police => NeedsFeature("per-binding meters"),
            Scenario::Latency => NeedsFeature(
                "per-packet timestamps through the worker, or Pktgen-DPDK with latency on (see README)",
            ),
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
        }
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
        assert!(Scenario::Latency.help_line().contains("not yet available"));
    }
}
