//! The end of `opsbake build`: what each build created and deleted (counted
//! from the events by [`Tally`], a sink in front of the display), and the
//! summary table printed once every build has ended.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opsbake_core::events::{Event, EventKind, EventSink};
use opsbake_core::journal::Outcome;
use opsbake_core::manifest::RunOutcome;
use opsbake_core::runner::BuildResult;

/// Resources of one build, from its events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Created (journal records).
    pub created: usize,
    /// Deleted: `kind id`, in order.
    pub deleted: Vec<String>,
    /// Kept as the artifact.
    pub kept: usize,
}

/// Counts resources per build and forwards every event.
pub struct Tally {
    inner: Arc<dyn EventSink>,
    counts: Mutex<BTreeMap<String, Counts>>,
}

impl Tally {
    pub fn new(inner: Arc<dyn EventSink>) -> Tally {
        Tally {
            inner,
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counts of one build (by its IaaS prefix).
    pub fn counts(&self, build: &str) -> Counts {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.get(build).cloned())
            .unwrap_or_default()
    }
}

impl EventSink for Tally {
    fn emit(&self, event: Event) {
        if let (Some(b), Ok(mut c)) = (&event.build, self.counts.lock()) {
            let e = c.entry(b.clone()).or_default();
            match &event.kind {
                EventKind::ResourceCreated { .. } => e.created += 1,
                EventKind::ResourceDeleted { kind, id, .. } => {
                    e.deleted.push(format!("{kind} {id}"))
                }
                EventKind::ResourceKept { .. } => e.kept += 1,
                _ => {}
            }
        }
        self.inner.emit(event);
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "FAILED",
        Outcome::Cancelled => "cancelled",
    }
}

fn duration(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let m = (s / 60.0).floor();
        format!("{m:.0}m{:04.1}s", s - m * 60.0)
    }
}

/// The summary table: one row per build (IaaS, result, artifact, duration,
/// resources created/deleted/left), then a line saying how many succeeded.
pub fn render(results: &[BuildResult], tally: &Tally) -> String {
    let header = [
        "IAAS", "RESULT", "ARTIFACT", "DURATION", "CREATED", "DELETED", "LEFT",
    ];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for r in results {
        let c = tally.counts(&r.iaas);
        let artifact = match (&r.artifact, &r.error) {
            (Some(a), _) => a.id.clone(),
            (None, Some(e)) => {
                let e: String = e.chars().take(60).collect();
                format!("- ({e})")
            }
            (None, None) => "-".into(),
        };
        rows.push([
            r.iaas.clone(),
            outcome_word(r.outcome).into(),
            artifact,
            duration(r.seconds),
            c.created.to_string(),
            c.deleted.len().to_string(),
            r.leftovers.len().to_string(),
        ]);
    }
    let mut width = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width.iter()).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    for row in &rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    let ok = results
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .count();
    let mut tail = format!("{ok} of {} build(s) succeeded", results.len());
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.outcome != Outcome::Succeeded)
        .map(|r| r.iaas.as_str())
        .collect();
    if !failed.is_empty() {
        tail.push_str(&format!(
            "; run again without the others: --iaas {}",
            failed.join(",")
        ));
    }
    out.push(tail);
    out.join("\n")
}

/// After Ctrl-C: what the unwinding deleted, per build.
pub fn deleted_report(results: &[BuildResult], tally: &Tally) -> String {
    let mut out = Vec::new();
    for r in results {
        let c = tally.counts(&r.iaas);
        if c.deleted.is_empty() {
            out.push(format!(
                "[{}] deleted nothing (nothing was created)",
                r.iaas
            ));
        } else {
            out.push(format!(
                "[{}] deleted {} resource(s): {}",
                r.iaas,
                c.deleted.len(),
                c.deleted.join(", ")
            ));
        }
    }
    out.join("\n")
}

/// Write every build's outcome into its manifest's `last_run` (the
/// succeeded ones are in `builds` already); a failure to write is a warning.
pub fn record_run(manifests: &[(String, std::path::PathBuf)], results: &[BuildResult]) {
    let mut by_path: BTreeMap<&std::path::Path, Vec<RunOutcome>> = BTreeMap::new();
    for r in results {
        let Some((_, path)) = manifests.iter().find(|(i, _)| *i == r.iaas) else {
            continue;
        };
        by_path.entry(path).or_default().push(RunOutcome {
            iaas: r.iaas.clone(),
            build_id: r.build_id.clone(),
            outcome: match r.outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Failed => "failed",
                Outcome::Cancelled => "cancelled",
            }
            .into(),
            artifact_id: r.artifact.as_ref().map(|a| a.id.clone()),
            error: r.error.clone(),
        });
    }
    for (path, outcomes) in by_path {
        if let Err(e) = opsbake_core::manifest::record_run(path, outcomes) {
            eprintln!("warning: could not record the run's outcomes: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opsbake_core::builder::Artifact;
    use opsbake_core::events::{Emitter, MemorySink};

    fn result(iaas: &str, outcome: Outcome, art: Option<&str>, secs: f64) -> BuildResult {
        BuildResult {
            iaas: iaas.into(),
            build_id: format!("ob-1-{iaas}"),
            outcome,
            artifact: art.map(|a| Artifact {
                id: a.into(),
                ..Artifact::default()
            }),
            error: (outcome != Outcome::Succeeded).then(|| "launch: quota exceeded".into()),
            leftovers: Vec::new(),
            kept_on_error: false,
            seconds: secs,
        }
    }

    #[test]
    fn the_table_counts_what_the_events_said() {
        let mem = Arc::new(MemorySink::default());
        let t = Arc::new(Tally::new(mem.clone()));
        let aws = Emitter::for_build(t.clone(), "aws", "ob-1-aws");
        let gcp = Emitter::for_build(t.clone(), "gcp", "ob-1-gcp");
        for i in 0..3 {
            aws.emit(EventKind::ResourceCreated {
                seq: i,
                kind: "instance".into(),
                id: format!("i-{i}"),
            });
        }
        aws.emit(EventKind::ResourceDeleted {
            seq: 0,
            kind: "instance".into(),
            id: "i-0".into(),
        });
        gcp.emit(EventKind::ResourceCreated {
            seq: 0,
            kind: "disk".into(),
            id: "d".into(),
        });
        gcp.emit(EventKind::ResourceDeleted {
            seq: 0,
            kind: "disk".into(),
            id: "d".into(),
        });
        assert_eq!(mem.events().len(), 6, "every event is forwarded");
        let rs = vec![
            result("aws", Outcome::Succeeded, Some("us-east-1:ami-1"), 75.25),
            result("gcp", Outcome::Failed, None, 3.0),
        ];
        let table = render(&rs, &t);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("IAAS  RESULT"), "{table}");
        let aws_row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            aws_row,
            [
                "aws",
                "succeeded",
                "us-east-1:ami-1",
                "1m15.2s",
                "3",
                "1",
                "0"
            ]
        );
        assert!(lines[2].starts_with("gcp   FAILED"), "{table}");
        assert!(lines[2].contains("(launch: quota exceeded)"), "{table}");
        let gcp_row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(gcp_row[gcp_row.len() - 4..], ["3.0s", "1", "1", "0"]);
        assert_eq!(
            lines[3],
            "1 of 2 build(s) succeeded; run again without the others: --iaas gcp"
        );
        let d = deleted_report(&rs, &t);
        assert!(
            d.contains("[aws] deleted 1 resource(s): instance i-0"),
            "{d}"
        );
        assert!(d.contains("[gcp] deleted 1 resource(s): disk d"), "{d}");
        // no colour codes in the table
        assert!(!table.contains('\u{1b}'));
    }
}
