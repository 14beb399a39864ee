//! The reconciliation as a person reads it at the end of the demo and from `scripts/demo reconcile`: one line per
//! upload and per campaign, each with its sums and whether they hold, the rejected rows by reason under their
//! upload, and what the partners received.

use clickpacer::postgres::reports::{CampaignReconciliation, ClickFates, UploadReconciliation};

/// The reconciliation, printed; returns whether every line holds.
pub fn render_reconciliation(uploads: &[UploadReconciliation], campaigns: &[CampaignReconciliation]) -> (String, bool) {
    let mut ok = true;
    let mut out = String::from(
        "Uploads: rows = accepted + rejected + duplicate; accepted = delivered + dead + cancelled + pending\n",
    );
    for u in uploads {
        let holds = u.holds();
        ok &= holds;
        let detail = u.status_detail.as_deref().filter(|d| !d.is_empty()).map_or(String::new(), |d| format!(" ({d})"));
        out.push_str(&format!(
            "  {} {:<46} {}{detail}: rows {} = {} + {} + {}; {} = {} + {} + {} + {}{}\n",
            verdict(holds),
            u.object_key,
            u.status,
            u.rows,
            u.accepted_rows,
            u.rejected_rows,
            u.duplicate_rows,
            u.fates.accepted,
            u.fates.delivered,
            u.fates.dead,
            u.fates.cancelled,
            u.fates.pending,
            problems(&u.fates),
        ));
        if u.stored_clicks != u.accepted_rows {
            out.push_str(&format!("        {} clicks stored for {} accepted rows\n", u.stored_clicks, u.accepted_rows));
        }
        for group in &u.rejects {
            let others = match group.distinct - 1 {
                n if n <= 0 => String::new(),
                1 => " (and 1 other value)".to_owned(),
                n => format!(" (and {n} other values)"),
            };
            out.push_str(&format!("        rejected {:>6} × {}{others}\n", group.rows, group.example));
        }
    }
    out.push_str("Campaigns: accepted = delivered + dead + cancelled + pending\n");
    for c in campaigns {
        let holds = c.fates.holds();
        ok &= holds;
        out.push_str(&format!(
            "  {} {:<18} {} = {} + {} + {} + {}{}\n",
            verdict(holds),
            c.campaign_id,
            c.fates.accepted,
            c.fates.delivered,
            c.fates.dead,
            c.fates.cancelled,
            c.fates.pending,
            problems(&c.fates),
        ));
    }
    (out, ok)
}

/// What the partner simulator received (its `GET /report`), as the last line of the reconciliation: a click
/// accepted twice breaks the promise as much as a click lost.
pub fn render_partner_report(report: &partner_sim::Report) -> String {
    format!(
        "Partners: {} requests, {} accepted, {} throttled (429); {} clicks accepted twice\n",
        report.total_requests, report.accepted, report.throttled, report.duplicate_accepted_keys
    )
}

/// The line printed when the slicer finishes an upload (completed or failed); nothing for one still going.
pub fn render_upload_finished(report: &slicer::ObjectReport) -> Option<String> {
    let counts = |c: &clickpacer::postgres::uploads::UploadCounts| {
        format!("{} rows: {} accepted, {} rejected, {} duplicate", c.rows, c.accepted, c.rejected, c.duplicate)
    };
    match &report.outcome {
        slicer::UploadOutcome::Completed { counts: c, rejects_key, .. } => Some(format!(
            "upload {} completed: {}{}",
            report.key,
            counts(c),
            rejects_key.as_ref().map_or(String::new(), |k| format!("; rejects report s3://{}/{k}", report.bucket))
        )),
        slicer::UploadOutcome::Failed { reason, counts: c, .. } => {
            Some(format!("upload {} failed: {reason} (after {})", report.key, counts(c)))
        }
        _ => None,
    }
}

fn verdict(holds: bool) -> &'static str {
    if holds { "ok " } else { "BAD" }
}

/// What breaks a line beyond its sums: stranded and unaccounted clicks.
fn problems(fates: &ClickFates) -> String {
    let mut out = String::new();
    if fates.stranded > 0 {
        out.push_str(&format!("  ({} stranded: pending with nothing coming for them)", fates.stranded));
    }
    if fates.unaccounted > 0 {
        out.push_str(&format!("  ({} unaccounted)", fates.unaccounted));
    }
    out
}

#[cfg(test)]
mod tests {
    use clickpacer::postgres::reports::RejectGroup;

    use super::*;

    fn upload(detail: Option<&str>, rejects: Vec<RejectGroup>) -> UploadReconciliation {
        let rejected: i64 = rejects.iter().map(|g| g.rows).sum();
        UploadReconciliation {
            upload_id: 1,
            object_key: "incoming/spring-asap/clicks.csv".into(),
            status: "completed".into(),
            status_detail: detail.map(str::to_owned),
            rows: 10 + rejected,
            accepted_rows: 10,
            rejected_rows: rejected,
            duplicate_rows: 0,
            stored_clicks: 10,
            rejects,
            fates: ClickFates { accepted: 10, delivered: 10, ..ClickFates::default() },
        }
    }

    #[test]
    fn an_upload_line_ends_with_its_sums_when_it_has_no_detail() {
        let (text, ok) = render_reconciliation(&[upload(None, vec![])], &[]);
        assert!(ok);
        let line = text.lines().nth(1).unwrap();
        assert!(line.ends_with("completed: rows 10 = 10 + 0 + 0; 10 = 10 + 0 + 0 + 0"), "{line:?}");
        let (text, _) = render_reconciliation(&[upload(Some("no clicks in the file"), vec![])], &[]);
        assert!(text.contains("completed (no clicks in the file): rows"), "{text}");
    }

    #[test]
    fn reasons_keep_their_values_and_say_how_many_others_share_the_line() {
        let rejects = vec![
            RejectGroup { example: r#"unknown campaign "summer-evn""#.into(), rows: 4, distinct: 3 },
            RejectGroup { example: "missing click_id".into(), rows: 2, distinct: 1 },
        ];
        let (text, _) = render_reconciliation(&[upload(None, rejects)], &[]);
        let lines: Vec<&str> = text.lines().skip(2).take(2).collect();
        assert_eq!(
            lines,
            [
                r#"        rejected      4 × unknown campaign "summer-evn" (and 2 other values)"#,
                "        rejected      2 × missing click_id"
            ]
        );
    }

    #[test]
    fn a_finished_upload_is_one_line_with_its_counts_and_rejects_report() {
        let counts = clickpacer::postgres::uploads::UploadCounts { rows: 10, accepted: 8, rejected: 1, duplicate: 1 };
        let report = |outcome| slicer::ObjectReport {
            bucket: "clickpacer-uploads".into(),
            key: "incoming/a/x.csv".into(),
            outcome,
        };
        let done = report(slicer::UploadOutcome::Completed {
            upload_id: 1,
            counts,
            rejects_key: Some("rejects/incoming/a/x.csv".into()),
        });
        assert_eq!(
            render_upload_finished(&done).unwrap(),
            "upload incoming/a/x.csv completed: 10 rows: 8 accepted, 1 rejected, 1 duplicate; \
             rejects report s3://clickpacer-uploads/rejects/incoming/a/x.csv"
        );
        let going = report(slicer::UploadOutcome::Suspended { upload_id: 1, counts });
        assert_eq!(render_upload_finished(&going), None);
    }

    #[test]
    fn the_partner_line_counts_clicks_accepted_twice() {
        let report = partner_sim::Report { total_requests: 12, accepted: 10, throttled: 2, ..Default::default() };
        assert_eq!(
            render_partner_report(&report),
            "Partners: 12 requests, 10 accepted, 2 throttled (429); 0 clicks accepted twice\n"
        );
    }
}
