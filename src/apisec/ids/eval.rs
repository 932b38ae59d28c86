//! Measuring the detector on the IDS corpus (`tests/data/corpus`): the
//! library side of the `ids-eval` command and of the corpus test. Each
//! record is turned into the same [`RequestView`] the live layer builds and
//! inspected by the same [`Ids::inspect`] with the default configuration.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use super::{Ids, RequestView};
use crate::config::IdsConfig;

/// One corpus record (the fields the eval needs).
#[derive(Deserialize)]
pub struct Record {
    pub id: String,
    pub label: String,
    pub family: String,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub body_b64: Option<String>,
}

impl Record {
    fn body_bytes(&self) -> Vec<u8> {
        match &self.body_b64 {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            None => self.body.as_bytes().to_vec(),
        }
    }
}

/// Counts for one row of the table.
#[derive(Default, Clone, Debug)]
pub struct Row {
    pub blocked: usize,
    pub total: usize,
    pub missed: Vec<String>,
    pub blocked_ids: Vec<String>,
}

impl Row {
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.blocked as f64 / self.total as f64
        }
    }
}

/// The whole result.
#[derive(Default, Debug)]
pub struct Report {
    /// Attack records per family.
    pub attacks: BTreeMap<String, Row>,
    pub crs_benign: Row,
    pub agent_benign: Row,
    /// Records whose verdict differs with the prefilter and the clean-value
    /// memo off (must be none; the memo fills up over the run, so later
    /// records meet values that earlier ones made it remember).
    pub prefilter_mismatches: Vec<String>,
}

/// Read every `*.jsonl` file of `dir`.
pub fn load(dir: &Path) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: Record = serde_json::from_str(line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", f.display(), n + 1),
                )
            })?;
            out.push(r);
        }
    }
    Ok(out)
}

/// The verdict for one record (for `ids-eval --explain`).
pub fn explain(ids: &Ids, r: &Record) -> String {
    let body = r.body_bytes();
    let view = RequestView {
        method: &r.method,
        target: &r.uri,
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect(),
        body: &body,
    };
    format!("{:?}", ids.inspect(&view))
}

/// Is this record blocked (a block verdict, or refused as too deep)?
pub fn blocked(ids: &Ids, r: &Record) -> bool {
    why(ids, r).is_some()
}

/// Why a record is blocked: `family/rule at location`, or `None`.
pub fn why(ids: &Ids, r: &Record) -> Option<String> {
    let body = r.body_bytes();
    let view = RequestView {
        method: &r.method,
        target: &r.uri,
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect(),
        body: &body,
    };
    match ids.inspect(&view) {
        Ok(v) => v
            .block
            .map(|h| format!("{}/{} at {}", h.family.name(), h.rule, h.location)),
        Err(e) => Some(e.to_string()),
    }
}

/// Run the default configuration over the records.
pub fn evaluate(records: &[Record]) -> Report {
    let ids = Ids::new(&IdsConfig::default(), "X-API-Key", &[]);
    let mut raw = Ids::new(&IdsConfig::default(), "X-API-Key", &[]);
    raw.set_prefilter(false);
    raw.set_memo(false);
    let mut rep = Report::default();
    for r in records {
        let w = why(&ids, r);
        let b = w.is_some();
        if b != blocked(&raw, r) {
            rep.prefilter_mismatches.push(r.id.clone());
        }
        let row = if r.family == "agent-benign" {
            &mut rep.agent_benign
        } else if r.label == "benign" {
            &mut rep.crs_benign
        } else {
            rep.attacks.entry(r.family.clone()).or_default()
        };
        row.total += 1;
        if b {
            row.blocked += 1;
            row.blocked_ids
                .push(format!("{} ({})", r.id, w.unwrap_or_default()));
        } else {
            row.missed.push(r.id.clone());
        }
    }
    rep
}

/// The table, as printed by `ids-eval` and recorded in `docs/IDS.md`.
pub fn table(rep: &Report) -> String {
    let mut s = String::from("| set | blocked | total | rate |\n|---|---:|---:|---:|\n");
    let mut inj = Row::default();
    for (fam, row) in &rep.attacks {
        s.push_str(&format!(
            "| attacks: {fam} | {} | {} | {:.1} % |\n",
            row.blocked,
            row.total,
            row.rate()
        ));
        if !matches!(fam.as_str(), "protocol" | "other") {
            inj.blocked += row.blocked;
            inj.total += row.total;
        }
    }
    s.push_str(&format!(
        "| **attacks: injection families (all but protocol, other)** | {} | {} | {:.1} % |\n",
        inj.blocked,
        inj.total,
        inj.rate()
    ));
    s.push_str(&format!(
        "| **CRS benign (false positives)** | {} | {} | {:.1} % |\n",
        rep.crs_benign.blocked,
        rep.crs_benign.total,
        rep.crs_benign.rate()
    ));
    s.push_str(&format!(
        "| **agent benign (false positives)** | {} | {} | {:.1} % |\n",
        rep.agent_benign.blocked,
        rep.agent_benign.total,
        rep.agent_benign.rate()
    ));
    s
}
