//! Bulk import: one CSV file per table, into `add` changes.
//!
//! The first row is a header naming the columns, in any order. Optional
//! columns may be left out of the header, or left empty in a row (empty
//! means "not set"). Cells are trimmed; lines starting with `#` are
//! comments. Unknown or repeated columns are errors.
//!
//! | table | required columns | optional columns |
//! |---|---|---|
//! | `coupon` | `id`, `subscriber`, `level` | `dst`, `port`, `expires`, decision columns |
//! | `login` | `subscriber`, `login`, `tier` | |
//! | `tier` | `name`, `level` | decision columns |
//! | `sp` | `id`, `provider`, `level`, and `ip` or `prefix` | `port`, decision columns |
//! | `eligibility` | `dst` | `port` |
//!
//! Decision columns: `level` (0..=7 or a name), `dscp` (0..=63 or `level`),
//! `dst_port`, `dst_addr`, `mss_clamp`, and `committed_bps` with `peak_bps`
//! (both or neither). The values mean what the same JSON fields mean (see
//! [`super::protocol`]).
//!
//! ```csv
//! id,subscriber,dst,port,level,dscp,committed_bps,peak_bps,expires
//! cp-1,10.0.0.8,203.0.113.0/24,443,voice,level,2000000,4000000,1767225600
//! cp-2,2001:db8::8,,,premium,,,,
//! ```
//!
//! Every bad row is an error naming its line (1 is the header) and column:
//! a bad IP or prefix, a level out of range, a key (or, for coupons and SP
//! allocations, a match) that an earlier line of the same file already
//! has. Whether the rows fit the current policy (new keys, known tiers) is
//! checked when the batches are applied, as for any request. Rows stream:
//! [`CsvImport`] yields one change at a time, so the caller can cut batches
//! and show progress.
use std::collections::HashMap;
use std::io::Read;

use thiserror::Error;

use super::model::{
    Change, CouponSpec, DecisionSpec, DscpMark, EligibilitySpec, Entry, Key, Level, LoginSpec,
    ModelError, Port, RateSpec, SpMatch, SpSpec, Table, TierSpec,
};
use super::model::{CouponBinding, EligibilityRule, LoginBinding, Prefix, SpAllocation, Tier};

/// A bad row (or header): 1-based line, column name (empty if the whole
/// row is wrong), and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}{}: {reason}", if column.is_empty() { String::new() } else { format!(", column `{column}`") })]
pub struct CsvError {
    pub line: u64,
    pub column: String,
    pub reason: String,
}

fn cerr(line: u64, column: &str, reason: impl Into<String>) -> CsvError {
    CsvError {
        line,
        column: column.to_string(),
        reason: reason.into(),
    }
}

const DECISION: &[&str] = &[
    "level",
    "dscp",
    "dst_port",
    "dst_addr",
    "mss_clamp",
    "committed_bps",
    "peak_bps",
];

fn columns(table: Table) -> Option<(&'static [&'static str], Vec<&'static str>)> {
    let (required, mut optional): (&[&str], Vec<&str>) = match table {
        Table::Coupon => (
            &["id", "subscriber", "level"],
            vec!["dst", "port", "expires"],
        ),
        Table::Login => (&["subscriber", "login", "tier"], vec![]),
        Table::Tier => (&["name", "level"], vec![]),
        Table::Sp => (&["id", "provider", "level"], vec!["ip", "prefix", "port"]),
        Table::Eligibility => (&["dst"], vec!["port"]),
        Table::Default => return None,
    };
    if matches!(table, Table::Coupon | Table::Tier | Table::Sp) {
        optional.extend(DECISION.iter().filter(|c| **c != "level"));
    }
    Some((required, optional))
}

/// Unique per file besides the key: what two rows must not both match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MatchKey {
    Coupon(std::net::IpAddr, Option<Prefix>, Option<Port>),
    Sp(SpMatch, Option<Port>),
}

/// A streaming CSV import of one table.
pub struct CsvImport<R: Read> {
    table: Table,
    rows: ::csv::StringRecordsIntoIter<R>,
    /// Column name -> position in the row.
    index: HashMap<&'static str, usize>,
    seen: HashMap<Key, u64>,
    seen_match: HashMap<MatchKey, u64>,
    failed: bool,
}

impl<R: Read> CsvImport<R> {
    /// Read and check the header.
    pub fn new(table: Table, input: R) -> Result<CsvImport<R>, CsvError> {
        let Some((required, optional)) = columns(table) else {
            return Err(cerr(
                1,
                "",
                "the default decision is not imported from CSV: use an update request",
            ));
        };
        let mut rdr = ::csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(::csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(input);
        let header = rdr
            .headers()
            .map_err(|e| cerr(1, "", format!("cannot read the header: {e}")))?
            .clone();
        let mut index = HashMap::new();
        for (i, name) in header.iter().enumerate() {
            let Some(known) = required.iter().chain(optional.iter()).find(|c| **c == name) else {
                return Err(cerr(
                    1,
                    name,
                    format!(
                        "unknown column for table {table} (columns: {})",
                        required
                            .iter()
                            .chain(optional.iter())
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            if index.insert(*known, i).is_some() {
                return Err(cerr(1, name, "column repeated"));
            }
        }
        if let Some(missing) = required.iter().find(|c| !index.contains_key(*c)) {
            return Err(cerr(
                1,
                missing,
                format!("required column missing from the header of table {table}"),
            ));
        }
        if table == Table::Sp && !index.contains_key("ip") && !index.contains_key("prefix") {
            return Err(cerr(
                1,
                "ip",
                "the sp table needs an `ip` or a `prefix` column",
            ));
        }
        Ok(CsvImport {
            table,
            rows: rdr.into_records(),
            index,
            seen: HashMap::new(),
            seen_match: HashMap::new(),
            failed: false,
        })
    }

    fn row(&mut self, rec: &::csv::StringRecord, line: u64) -> Result<Change, CsvError> {
        let cell = |c: &str| -> Option<String> {
            self.index
                .get(c)
                .and_then(|&i| rec.get(i))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let text = |c: &str| cell(c).unwrap_or_default();
        let num = |c: &str| -> Result<Option<u64>, CsvError> {
            cell(c)
                .map(|s| {
                    s.parse::<u64>()
                        .map_err(|_| cerr(line, c, format!("{s:?} is not a whole number")))
                })
                .transpose()
        };
        let decision = || -> Result<DecisionSpec, CsvError> {
            let level = match cell("level") {
                Some(l) => l.parse::<Level>().map_err(|r| cerr(line, "level", r))?,
                None => return Err(cerr(line, "level", "missing: every row needs a level")),
            };
            let dscp = cell("dscp")
                .map(|d| d.parse::<DscpMark>().map_err(|r| cerr(line, "dscp", r)))
                .transpose()?;
            let rate = match (num("committed_bps")?, num("peak_bps")?) {
                (None, None) => None,
                (Some(committed_bps), Some(peak_bps)) => Some(RateSpec {
                    committed_bps,
                    peak_bps,
                }),
                (Some(_), None) => {
                    return Err(cerr(
                        line,
                        "peak_bps",
                        "missing: give both committed_bps and peak_bps, or neither",
                    ))
                }
                (None, Some(_)) => {
                    return Err(cerr(
                        line,
                        "committed_bps",
                        "missing: give both committed_bps and peak_bps, or neither",
                    ))
                }
            };
            Ok(DecisionSpec {
                level,
                dscp,
                dst_port: num("dst_port")?,
                dst_addr: cell("dst_addr"),
                mss_clamp: num("mss_clamp")?,
                rate,
            })
        };
        // A model error's field is a JSON path; its CSV column is the last
        // segment (`decision.rate.peak_bps` -> `peak_bps`).
        let model = |e: ModelError| {
            let col = e.field.rsplit('.').next().unwrap_or_default().to_string();
            cerr(line, &col, e.reason)
        };
        let entry = match self.table {
            Table::Coupon => Entry::Coupon(
                CouponBinding::try_from(CouponSpec {
                    id: text("id"),
                    subscriber: text("subscriber"),
                    dst: cell("dst"),
                    port: num("port")?,
                    decision: decision()?,
                    expires: num("expires")?,
                })
                .map_err(model)?,
            ),
            Table::Login => Entry::Login(
                LoginBinding::try_from(LoginSpec {
                    subscriber: text("subscriber"),
                    login: text("login"),
                    tier: text("tier"),
                })
                .map_err(model)?,
            ),
            Table::Tier => Entry::Tier(
                Tier::try_from(TierSpec {
                    name: text("name"),
                    decision: decision()?,
                })
                .map_err(model)?,
            ),
            Table::Sp => Entry::Sp(
                SpAllocation::try_from(SpSpec {
                    id: text("id"),
                    provider: text("provider"),
                    ip: cell("ip"),
                    prefix: cell("prefix"),
                    port: num("port")?,
                    decision: decision()?,
                })
                .map_err(model)?,
            ),
            Table::Eligibility => Entry::Eligibility(
                EligibilityRule::try_from(EligibilitySpec {
                    dst: text("dst"),
                    port: num("port")?,
                })
                .map_err(model)?,
            ),
            Table::Default => unreachable!("refused in new()"),
        };
        let key = entry.key();
        if let Some(first) = self.seen.get(&key) {
            return Err(cerr(
                line,
                key.field(),
                format!("duplicate key: {key} is already on line {first}"),
            ));
        }
        let m = match &entry {
            Entry::Coupon(c) => Some((
                MatchKey::Coupon(c.subscriber(), c.dst(), c.port()),
                "subscriber",
            )),
            Entry::Sp(s) => Some((MatchKey::Sp(s.target(), s.port()), s.target().field())),
            _ => None,
        };
        if let Some((m, col)) = m {
            if let Some(first) = self.seen_match.get(&m) {
                return Err(cerr(
                    line,
                    col,
                    format!("duplicate match: line {first} already matches the same traffic"),
                ));
            }
            self.seen_match.insert(m, line);
        }
        self.seen.insert(key, line);
        Ok(Change::Add(entry))
    }
}

impl<R: Read> Iterator for CsvImport<R> {
    type Item = Result<Change, CsvError>;

    /// The next row's change; after the first error, `None`.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rec = self.rows.next()?;
        let r = match rec {
            Ok(rec) => {
                let line = rec.position().map_or(0, |p| p.line());
                self.row(&rec, line)
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                Err(cerr(
                    line,
                    "",
                    format!("unreadable CSV row: {}", e.kind_text()),
                ))
            }
        };
        self.failed = r.is_err();
        Some(r)
    }
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for ::csv::Error {
    fn kind_text(&self) -> String {
        match self.kind() {
            ::csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("{len} fields where the header has {expected_len}"),
            ::csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
            _ => self.to_string(),
        }
    }
}

/// The whole file as `add` changes, or its first bad row.
pub fn parse_csv<R: Read>(table: Table, input: R) -> Result<Vec<Change>, CsvError> {
    CsvImport::new(table, input)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Decision;
    use crate::policy::state::{FlowQuery, PolicyState, Source};

    fn bad(table: Table, text: &str) -> CsvError {
        parse_csv(table, text.as_bytes()).expect_err(text)
    }

    #[test]
    fn a_good_file_of_each_table_imports_and_applies() {
        let tiers = "name,level,dscp,committed_bps,peak_bps\n# comment\ngold, premium ,level,1000,2000\nsilver,4,,,\n";
        let logins = "subscriber,login,tier\n10.0.0.7,alice,gold\n2001:db8::7,bob,silver\n";
        let coupons = "id,subscriber,dst,port,level,dscp,dst_port,dst_addr,mss_clamp,expires\ncp-1,10.0.0.8,203.0.113.0/24,443,voice,level,8443,198.51.100.9,1400,1767225600\ncp-2,10.0.0.8,,,3,,,,,\n";
        let sps = "id,provider,ip,prefix,port,level\nsp-1,acme,192.0.2.1,,5060,voice\nsp-2,acme,,198.51.100.0/24,,2\n";
        let elig = "dst,port\n203.0.113.0/24,\n0.0.0.0/0,5060\n";
        let mut batch = Vec::new();
        for (t, text, n) in [
            (Table::Tier, tiers, 2),
            (Table::Login, logins, 2),
            (Table::Coupon, coupons, 2),
            (Table::Sp, sps, 2),
            (Table::Eligibility, elig, 2),
        ] {
            let c = parse_csv(t, text.as_bytes()).unwrap();
            assert_eq!(c.len(), n, "{t}");
            batch.extend(c);
        }
        let mut s = PolicyState::new();
        s.apply(&batch).unwrap();
        let (d, src) = s.classify(&FlowQuery {
            src: "10.0.0.8".parse().unwrap(),
            dst: "203.0.113.5".parse().unwrap(),
            proto: 6,
            dst_port: 443,
            now: 0,
        });
        assert_eq!(src, Source::Coupon { id: "cp-1".into() });
        assert_eq!(d.dscp().map(|d| d.value()), Some(46));
        assert_eq!(d.actions().mss_clamp.map(|m| m.get()), Some(1400));
        let gold = s.get(&Key::Tier("gold".into())).unwrap();
        match gold {
            Entry::Tier(t) => assert_eq!(t.decision().rate().unwrap().peak_bps(), 2000),
            _ => unreachable!(),
        }
        assert_ne!(*s.default_decision(), Decision::level_only(Level::Voice));
    }

    #[test]
    fn each_kind_of_bad_row_names_line_and_column() {
        let e = bad(
            Table::Login,
            "subscriber,login,tier\n10.0.0.1,a,t\n10.0.0.300,b,t\n",
        );
        assert_eq!((e.line, e.column.as_str()), (3, "subscriber"));
        assert!(e.reason.contains("bad IP address"), "{e}");
        let e = bad(Table::Eligibility, "dst\n10.0.0.0/8\n10.0.0.0/40\n");
        assert_eq!((e.line, e.column.as_str()), (3, "dst"));
        assert!(e.reason.contains("bad prefix"), "{e}");
        let e = bad(Table::Tier, "name,level\ngold,8\n");
        assert_eq!((e.line, e.column.as_str()), (2, "level"));
        assert!(e.reason.contains("0..=7"), "{e}");
        let e = bad(Table::Tier, "name,level,dscp\ngold,1,64\n");
        assert_eq!(e.column, "dscp");
        let e = bad(
            Table::Coupon,
            "id,subscriber,level\nc1,10.0.0.1,1\nc2,10.0.0.2,1\nc1,10.0.0.3,1\n",
        );
        assert_eq!((e.line, e.column.as_str()), (4, "id"));
        assert!(e.reason.contains("already on line 2"), "{e}");
        let e = bad(
            Table::Coupon,
            "id,subscriber,level\nc1,10.0.0.1,1\nc2,10.0.0.1,2\n",
        );
        assert_eq!((e.line, e.column.as_str()), (3, "subscriber"));
        assert!(e.reason.contains("duplicate match"), "{e}");
        let e = bad(
            Table::Login,
            "subscriber,login,tier\n10.0.0.1,a,t\n10.0.0.1,b,t\n",
        );
        assert_eq!((e.line, e.column.as_str()), (3, "subscriber"));
        let e = bad(
            Table::Coupon,
            "id,subscriber,level,port\nc1,10.0.0.1,1,http\n",
        );
        assert_eq!((e.line, e.column.as_str()), (2, "port"));
        let e = bad(
            Table::Coupon,
            "id,subscriber,level,port\nc1,10.0.0.1,1,70000\n",
        );
        assert_eq!(e.column, "port");
        let e = bad(Table::Tier, "name,level,committed_bps,peak_bps\ng,1,10,5\n");
        assert_eq!(e.column, "peak_bps");
        let e = bad(Table::Tier, "name,level,committed_bps\ng,1,10\n");
        assert_eq!(e.column, "peak_bps");
        let e = bad(
            Table::Sp,
            "id,provider,ip,prefix,level\ns,p,192.0.2.1,192.0.2.0/24,1\n",
        );
        assert_eq!(e.column, "prefix");
        let e = bad(
            Table::Sp,
            "id,provider,ip,level\ns,p,192.0.2.1,1\nt,q,192.0.2.1,2\n",
        );
        assert_eq!((e.line, e.column.as_str()), (3, "ip"));
        let e = bad(
            Table::Coupon,
            "id,subscriber,dst,level\nc1,10.0.0.1,2001:db8::/32,1\n",
        );
        assert_eq!(e.column, "dst");
        let e = bad(Table::Tier, "name,level\ng,1,extra\n");
        assert_eq!((e.line, e.column.as_str()), (2, ""));
        assert!(e.reason.contains("3 fields where the header has 2"), "{e}");
        let e = bad(Table::Tier, "name,level\n,1\n");
        assert_eq!((e.line, e.column.as_str()), (2, "name"));
        let e = bad(Table::Tier, "name,level\ng,\n");
        assert_eq!(e.column, "level");
    }

    #[test]
    fn header_problems_are_line_one() {
        let e = bad(Table::Login, "subscriber,login\n");
        assert_eq!((e.line, e.column.as_str()), (1, "tier"));
        let e = bad(Table::Login, "subscriber,login,tier,colour\n");
        assert_eq!((e.line, e.column.as_str()), (1, "colour"));
        let e = bad(Table::Login, "subscriber,login,tier,login\n");
        assert!(e.reason.contains("repeated"), "{e}");
        let e = bad(Table::Sp, "id,provider,level\n");
        assert_eq!(e.column, "ip");
        assert_eq!(bad(Table::Default, "level\n1\n").line, 1);
    }

    #[test]
    fn rows_stream_and_stop_at_the_first_error() {
        let text = "dst\n10.0.0.0/8\nbad\n10.1.0.0/16\n";
        let mut it = CsvImport::new(Table::Eligibility, text.as_bytes()).unwrap();
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }
}
