//! The slicer against real PostgreSQL and the local S3, invoked with S3 events shaped like AWS's.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clickpacer::ingest::IngestLimits;
use clickpacer::invocation::Unlimited;
use slicer::{Slicer, SlicerSettings, TimeBudget, UploadOutcome};

mod common;
use common::*;

#[tokio::test]
async fn plain_csv_with_bad_rows_of_every_kind() {
    let w = world(7).await;
    let body = "Click-ID,Campaign,Time,IP,URL,tier\n\
                c1,spring,2026-11-28T10:00:00Z,10.0.0.1,https://a.example/x,gold\n\
                c2,spring,1764324000123,,https://a.example/y,\n\
                ,spring,1764324000,,,\n\
                c4,nope,1764324000,,,\n\
                c5,old,1764324000,,,\n\
                c6,spring,yesterday,,,\n\
                c7,spring,1764324000,,\n\
                c8,spring,1764324000,999.1.1.1,,\n\
                =HYPERLINK(\"http://evil\"),spring,soon,,,\n\
                c2,spring,1764324000,,,\n\
                c11,summer,1764324000,,,\n";
    let mut bytes = body.as_bytes().to_vec();
    bytes.extend_from_slice(b"c\xff12,spring,1764324000,,,\n");
    let etag = w.put("incoming/mixed.csv", bytes).await;
    let outcome = w.slice("incoming/mixed.csv", &etag).await;
    // 12 rows: c1, c2, c11 accepted (a paused campaign still takes clicks); c2 again is a duplicate. (The copies
    // are in two chunks, written in parallel, so either may be kept: c1's stored fields are checked below.)
    assert_eq!(counts(&outcome), (12, 3, 8, 1), "{outcome:?}");
    assert_eq!(w.stored().await.0, 3);

    let UploadOutcome::Completed { rejects_key: Some(rejects_key), .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(rejects_key, "rejects/mixed.csv.rejects.csv");
    let report = String::from_utf8(w.objects.get_bytes(&w.bucket, &rejects_key).await.unwrap()).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], "row,reason,field,raw");
    assert_eq!(lines.len(), 9);
    for expected in [
        "3,missing click_id,click_id,",
        "4,\"unknown campaign \"\"nope\"\"\"",
        "5,\"campaign \"\"old\"\" is archived\"",
        "6,\"unparseable clicked_at \"\"yesterday\"\"",
        "7,\"wrong column count: expected 6, found 5\"",
        "8,\"invalid ip \"\"999.1.1.1\"\"\"",
        "12,invalid UTF-8,,",
        "8,\"invalid ip \"\"999.1.1.1\"\"\",ip,",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(expected)), "{expected:?} in\n{report}");
    }
    let injected = lines.iter().find(|l| l.starts_with("9,")).unwrap();
    assert!(injected.contains("'=HYPERLINK"), "formula neutralised: {injected}");

    let stored: (String, Option<String>, String) = {
        let row =
            w.db.client()
                .await
                .query_one("SELECT host(ip), landing_url, attributes->>'tier' FROM clicks WHERE click_id = 'c1'", &[])
                .await
                .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(stored, ("10.0.0.1".into(), Some("https://a.example/x".into()), "gold".into()));
}

#[tokio::test]
async fn batches_follow_the_campaign_batch_size() {
    let w = world(1000).await;
    let etag = w.put("incoming/spring/day1.csv", csv_rows(0..95)).await;
    let outcome = w.slice("incoming/spring/day1.csv", &etag).await;
    assert_eq!(counts(&outcome), (95, 95, 0, 0));
    let (clicks, _, batches) = w.stored().await;
    assert_eq!((clicks, batches), (95, 10), "batch size 10: nine full batches and one of five");
    assert_eq!(w.scalar("SELECT max(click_count)::bigint FROM batches").await, 10);
    assert_eq!(w.scalar("SELECT count(*) FROM clicks_default").await, 0, "clicks land in their month's partition");
    assert_eq!(w.scalar("SELECT count(*) FROM batches WHERE state = 'pending' AND due_at <= now()").await, 10);
}

#[tokio::test]
async fn gzip_by_key_and_by_content_encoding() {
    let w = world(1000).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(csv_rows(0..50).as_bytes()).unwrap();
    let compressed = gz.finish().unwrap();

    let etag = w.put("incoming/spring/a.csv.gz", compressed.clone()).await;
    assert_eq!(counts(&w.slice("incoming/spring/a.csv.gz", &etag).await), (50, 50, 0, 0));

    w.objects
        .client()
        .put_object()
        .bucket(&w.bucket)
        .key("incoming/summer/b.csv")
        .content_encoding("gzip")
        .body(compressed.into())
        .send()
        .await
        .unwrap();
    let (info, _) = w.objects.open(&w.bucket, "incoming/summer/b.csv").await.unwrap();
    assert_eq!(counts(&w.slice("incoming/summer/b.csv", &info.version).await), (50, 50, 0, 0));
    assert_eq!(w.stored().await.0, 100);

    let etag = w.put("incoming/spring/broken.csv.gz", b"\x1f\x8b\x08\x00garbage".to_vec()).await;
    let outcome = w.slice("incoming/spring/broken.csv.gz", &etag).await;
    assert!(matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("gzip")), "{outcome:?}");
}

#[tokio::test]
async fn ndjson_lines() {
    let w = world(1000).await;
    let body = "{\"click_id\":\"n1\",\"clicked_at\":\"2026-11-28T10:00:00Z\",\"sub_id\":\"s-1\",\"geo\":\"FR\"}\n\
                \n\
                {\"click_id\":\"n2\",\"ts\":1764324000}\n\
                {\"click_id\":\"n3\"\n\
                [\"n4\"]\n";
    let etag = w.put("incoming/spring/clicks.ndjson", body).await;
    assert_eq!(counts(&w.slice("incoming/spring/clicks.ndjson", &etag).await), (4, 2, 2, 0));
    let geo: String =
        w.db.client()
            .await
            .query_one("SELECT attributes->>'geo' FROM clicks WHERE click_id = 'n1'", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(geo, "FR");
}

#[tokio::test]
async fn unknown_campaign_and_unreadable_files_are_answered() {
    let w = world(1000).await;
    let etag = w.put("incoming/ghost/a.csv", csv_rows(0..5)).await;
    assert_eq!(counts(&w.slice("incoming/ghost/a.csv", &etag).await), (5, 0, 5, 0));
    let report = w.objects.get_bytes(&w.bucket, "rejects/ghost/a.csv.rejects.csv").await.unwrap();
    assert!(String::from_utf8(report).unwrap().contains("unknown campaign \"\"ghost\"\""));

    let etag = w.put("incoming/spring/photo.bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".to_vec()).await;
    let outcome = w.slice("incoming/spring/photo.bin", &etag).await;
    assert!(matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("neither CSV")), "{outcome:?}");
    let etag = w.put("incoming/spring/nohead.csv", "id,url\n1,https://x\n").await;
    let outcome = w.slice("incoming/spring/nohead.csv", &etag).await;
    assert!(matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("no click_id column")));
    let status: String =
        w.db.client()
            .await
            .query_one(
                "SELECT status || ': ' || status_detail FROM uploads WHERE object_key = 'incoming/spring/nohead.csv'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert!(status.starts_with("failed: the header has no click_id column"), "{status}");
    // A failed upload is finished: the same event again does nothing.
    assert!(matches!(w.slice("incoming/spring/nohead.csv", &etag).await, UploadOutcome::AlreadyFinished { .. }));
}

#[tokio::test]
async fn duplicate_events_sequential_and_concurrent_make_one_set() {
    let w = world(20).await;
    let etag = w.put("incoming/spring/dup.csv", csv_rows(0..200)).await;
    let ev = || event(&[(&w.bucket, "incoming/spring/dup.csv", &etag)]);
    let runs = futures::future::join_all((0..4).map(|_| slicer::handle_event(&w.slicer, ev(), &Unlimited))).await;
    let completed = runs
        .iter()
        .flat_map(|r| r.as_ref().unwrap())
        .filter(|r| matches!(r.outcome, UploadOutcome::Completed { .. }))
        .count();
    assert_eq!(completed, 1, "exactly one invocation ingests: {runs:?}");
    for _ in 0..2 {
        let again = w.slice("incoming/spring/dup.csv", &etag).await;
        assert!(matches!(again, UploadOutcome::AlreadyFinished { .. }), "{again:?}");
    }
    let (clicks, _, batches) = w.stored().await;
    assert_eq!((clicks, batches), (200, 20));
    assert_eq!(w.scalar("SELECT count(*) FROM uploads").await, 1);

    // The same rows in another object: every one a duplicate of a click the campaign already has.
    let etag2 = w.put("incoming/spring/dup-copy.csv", csv_rows(150..250)).await;
    assert_eq!(counts(&w.slice("incoming/spring/dup-copy.csv", &etag2).await), (100, 50, 0, 50));
    assert_eq!(w.stored().await.0, 250);
}

#[tokio::test]
async fn url_encoded_keys_with_spaces_and_non_ascii() {
    let w = world(1000).await;
    let key = "incoming/spring/Clicks für Büro + 50%.csv";
    let etag = w.put(key, csv_rows(0..3)).await;
    let outcome = w.slice(key, &etag).await;
    assert_eq!(counts(&outcome), (3, 3, 0, 0));
    let stored: String = w.db.client().await.query_one("SELECT object_key FROM uploads", &[]).await.unwrap().get(0);
    assert_eq!(stored, key);
}

#[tokio::test]
async fn resumes_after_a_forced_stop_mid_file() {
    let w = world(100).await;
    let etag = w.put("incoming/spring/big.csv", csv_rows(0..1050)).await;
    let ev = || event(&[(&w.bucket, "incoming/spring/big.csv", &etag)]);

    let stopped = slicer::handle_event(&w.slicer, ev(), &ChunksLeft(AtomicU32::new(3))).await.unwrap_err();
    assert_eq!(stopped.unfinished, 1);
    assert!(matches!(stopped.reports[0].outcome, UploadOutcome::Suspended { .. }), "{stopped:?}");
    assert_eq!(counts(&stopped.reports[0].outcome), (300, 300, 0, 0));
    assert_eq!(w.stored().await.0, 300);
    let status: String = w.db.client().await.query_one("SELECT status FROM uploads", &[]).await.unwrap().get(0);
    assert_eq!(status, "processing", "never marked done early");

    let again = slicer::handle_event(&w.slicer, ev(), &ChunksLeft(AtomicU32::new(2))).await.unwrap_err();
    assert_eq!(counts(&again.reports[0].outcome), (500, 500, 0, 0));

    let done = slicer::handle_event(&w.slicer, ev(), &Unlimited).await.unwrap();
    assert_eq!(counts(&done[0].outcome), (1050, 1050, 0, 0));
    let (clicks, _, _) = w.stored().await;
    assert_eq!(clicks, 1050, "no loss, no duplicates");
    assert_eq!(w.scalar("SELECT count(DISTINCT click_id) FROM clicks").await, 1050);
}

#[tokio::test]
async fn one_bad_file_does_not_lose_the_others() {
    let w = world(1000).await;
    let good = w.put("incoming/spring/good.csv", csv_rows(0..10)).await;
    let bad = w.put("incoming/spring/bad.csv", "nonsense\n\x00\x01").await;
    let other = w.put("incoming/summer/other.csv", csv_rows(100..105)).await;
    let reports = slicer::handle_event(
        &w.slicer,
        event(&[
            (&w.bucket, "incoming/spring/good.csv", &good),
            (&w.bucket, "incoming/spring/bad.csv", &bad),
            (&w.bucket, "incoming/spring/missing.csv", "0123"),
            (&w.bucket, "incoming/summer/other.csv", &other),
        ]),
        &Unlimited,
    )
    .await
    .unwrap_err();
    // The missing object is a failure worth retrying; the rest are done.
    assert_eq!(reports.unfinished, 1, "{reports:?}");
    assert_eq!(reports.reports.len(), 3);
    assert_eq!(w.stored().await.0, 15);
}

/// Rows with a campaign column: every seventh row is rejected (bad IP address), every eleventh repeats the click
/// id of a row 150 rows earlier (same campaign, usually another chunk). Returns the file and the counts a correct
/// ingestion ends with: (rows, accepted, rejected, duplicate).
fn mixed_rows(rows: u32) -> (String, (u64, u64, u64, u64)) {
    let mut body = String::from("click_id,campaign,clicked_at,ip\n");
    let mut seen = std::collections::HashSet::new();
    let (mut accepted, mut rejected, mut duplicate) = (0, 0, 0);
    for i in 1..=rows {
        let campaign = if i % 3 == 0 { "summer" } else { "spring" };
        let id = if i % 11 == 0 && i > 150 { format!("k{}", i - 150) } else { format!("k{i}") };
        let ip = if i % 7 == 0 { "999.0.0.1" } else { "10.0.0.1" };
        body.push_str(&format!("{id},{campaign},1764324000,{ip}\n"));
        if i % 7 == 0 {
            rejected += 1;
        } else if seen.insert((campaign, id)) {
            accepted += 1;
        } else {
            duplicate += 1;
        }
    }
    (body, (rows as u64, accepted, rejected, duplicate))
}

/// A fake clock with plenty of time that fires `signal` when the `chunks`th chunk is handed to a writer (to kill
/// the invocation there, or to start another).
struct SignalAfter {
    chunks: AtomicU32,
    signal: std::sync::Arc<tokio::sync::Notify>,
}
impl TimeBudget for SignalAfter {
    fn remaining(&self) -> Duration {
        if self.chunks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.signal.notify_one();
        }
        Duration::from_secs(3600)
    }
}

impl World {
    /// A slicer with a pool of its own, to be dropped (its connections closed) as a crashed process's would be.
    fn own_slicer(&self) -> Slicer {
        Slicer {
            pool: clickpacer::postgres::build_pool(&self.db.config).unwrap(),
            objects: self.objects.clone(),
            settings: self.slicer.settings.clone(),
        }
    }

    /// The lease of an invocation that is still running expires (a long pause: the database judges it gone).
    async fn expire_leases(&self) {
        self.db
            .client()
            .await
            .execute(
                "UPDATE uploads SET lease_expires_at = now() - interval '1 second' WHERE lease_owner IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
    }

    /// What must hold for the single upload in the database at any time, finished or not: its committed chunks
    /// are disjoint and account for every counted row; every stored click and rejected row lies in one of them,
    /// once; batches hold the clicks they count, within one chunk and the campaign's batch size.
    async fn check_upload(&self) -> (u64, u64, u64, u64) {
        let client = self.db.client().await;
        let upload = client
            .query_one("SELECT upload_id, rows_done, accepted_rows, rejected_rows, duplicate_rows FROM uploads", &[])
            .await
            .unwrap();
        let upload_id: i64 = upload.get(0);
        let counts: Vec<u64> = (1..5).map(|i| upload.get::<_, i64>(i) as u64).collect();
        let ranges: Vec<(i64, i64)> = client
            .query(
                "SELECT first_row, last_row FROM upload_chunks WHERE upload_id = $1 ORDER BY first_row",
                &[&upload_id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 < pair[1].0, "committed chunks are disjoint: {ranges:?}");
        }
        let covered: i64 = ranges.iter().map(|(first, last)| last - first + 1).sum();
        assert_eq!(covered as u64, counts[0], "chunk ranges account for rows_done");
        let scalar = async |sql: &str| -> i64 { client.query_one(sql, &[]).await.unwrap().get(0) };
        assert_eq!(scalar("SELECT count(*) FROM clicks").await as u64, counts[1], "a stored click per accepted row");
        assert_eq!(scalar("SELECT count(DISTINCT (campaign_id, click_id)) FROM clicks").await as u64, counts[1]);
        assert_eq!(scalar("SELECT count(*) FROM click_ids").await as u64, counts[1]);
        assert_eq!(scalar("SELECT count(*) FROM upload_rejects").await as u64, counts[2]);
        let outside = "SELECT count(*) FROM (
                           SELECT row_number FROM clicks UNION ALL SELECT row_number FROM upload_rejects) r
                       WHERE NOT EXISTS (SELECT 1 FROM upload_chunks k
                                         WHERE r.row_number BETWEEN k.first_row AND k.last_row)";
        assert_eq!(scalar(outside).await, 0, "every stored row is in a committed chunk");
        let rows_twice = "SELECT count(*) FROM (
                              SELECT row_number FROM clicks UNION ALL SELECT row_number FROM upload_rejects) r
                          GROUP BY row_number HAVING count(*) > 1";
        assert!(client.query(rows_twice, &[]).await.unwrap().is_empty(), "no row stored twice");
        self.stored().await;
        let miscounted = "SELECT count(*) FROM batches b
                          WHERE click_count <> (SELECT count(*) FROM clicks c WHERE c.batch_id = b.batch_id)";
        assert_eq!(scalar(miscounted).await, 0, "a batch counts the clicks it holds");
        let oversized =
            "SELECT count(*) FROM batches b JOIN campaigns c USING (campaign_id) WHERE b.click_count > c.batch_size";
        assert_eq!(scalar(oversized).await, 0);
        let straddling = "SELECT count(*) FROM batches b WHERE NOT EXISTS (
                              SELECT 1 FROM upload_chunks k
                              WHERE k.upload_id = b.upload_id AND b.upload_seq BETWEEN k.first_row - 1 AND k.last_row - 1
                                AND NOT EXISTS (SELECT 1 FROM clicks c WHERE c.batch_id = b.batch_id
                                                AND c.row_number NOT BETWEEN k.first_row AND k.last_row))";
        assert_eq!(scalar(straddling).await, 0, "a batch's slot and clicks lie in one chunk");
        (counts[0], counts[1], counts[2], counts[3])
    }

    /// Undoes a committed chunk as if its transaction had never committed (while later chunks did). For files
    /// without rejected or duplicate rows.
    async fn uncommit_chunk(&self, first: i64, last: i64) {
        let client = self.db.client().await;
        let rows = last - first + 1;
        client
            .batch_execute(&format!(
                "BEGIN;
                 DELETE FROM click_ids k USING clicks c
                  WHERE c.row_number BETWEEN {first} AND {last}
                    AND k.campaign_id = c.campaign_id COLLATE \"C\" AND k.click_id = c.click_id COLLATE \"C\";
                 DELETE FROM clicks WHERE row_number BETWEEN {first} AND {last};
                 DELETE FROM batches b WHERE NOT EXISTS (SELECT 1 FROM clicks c WHERE c.batch_id = b.batch_id);
                 DELETE FROM upload_chunks WHERE first_row = {first} AND last_row = {last};
                 UPDATE uploads SET rows_done = rows_done - {rows}, accepted_rows = accepted_rows - {rows};
                 COMMIT;"
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_resume_after_a_forced_stop() {
    let w = world_with(SlicerSettings {
        chunk_rows: 100,
        writers: 3,
        reserve: Duration::from_secs(1),
        ..SlicerSettings::default()
    })
    .await;
    let etag = w.put("incoming/spring/big.csv", csv_rows(0..1050)).await;
    let ev = || event(&[(&w.bucket, "incoming/spring/big.csv", &etag)]);

    // Every chunk handed to a writer before time ran out is committed before the invocation gives up.
    let stopped = slicer::handle_event(&w.slicer, ev(), &ChunksLeft(AtomicU32::new(4))).await.unwrap_err();
    assert_eq!(counts(&stopped.reports[0].outcome), (400, 400, 0, 0), "{stopped:?}");
    assert_eq!(w.check_upload().await, (400, 400, 0, 0));
    let again = slicer::handle_event(&w.slicer, ev(), &ChunksLeft(AtomicU32::new(5))).await.unwrap_err();
    assert_eq!(counts(&again.reports[0].outcome), (900, 900, 0, 0));

    let done = slicer::handle_event(&w.slicer, ev(), &Unlimited).await.unwrap();
    assert_eq!(counts(&done[0].outcome), (1050, 1050, 0, 0));
    assert_eq!(w.check_upload().await, (1050, 1050, 0, 0));
    let chunks = w.scalar("SELECT count(*) FROM upload_chunks").await;
    assert_eq!(chunks, 11, "ten chunks of 100 rows and one of 50");
    let (_, _, batches) = w.stored().await;
    assert_eq!(batches, 105, "batch size 10, no batch spans two chunks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_point_resumes_without_loss_or_duplicates() {
    let w = world_with(SlicerSettings {
        chunk_rows: 50,
        writers: 3,
        reserve: Duration::from_secs(1),
        lease_for: Duration::from_secs(1),
        ..SlicerSettings::default()
    })
    .await;
    let (body, expected) = mixed_rows(1500);
    let etag = w.put("incoming/mixed.csv", body).await;
    let ev = || event(&[(&w.bucket, "incoming/mixed.csv", &etag)]);

    // Killed while chunks are being written, four times: connections closed mid-transaction, the lease left
    // behind; the next invocation waits for it to run out by itself.
    for chunks in [2, 3, 7, 12] {
        let slicer = w.own_slicer();
        let kill = std::sync::Arc::new(tokio::sync::Notify::new());
        let budget = SignalAfter { chunks: AtomicU32::new(chunks), signal: kill.clone() };
        tokio::select! {
            biased;
            () = kill.notified() => {}
            finished = slicer::handle_event(&slicer, ev(), &budget) => panic!("not killed: {finished:?}"),
        }
        drop(slicer);
        let (rows, accepted, rejected, duplicate) = w.check_upload().await;
        assert_eq!(rows, accepted + rejected + duplicate);
        assert!(rows < expected.0, "killed before the end");
    }
    let done = slicer::handle_event(&w.slicer, ev(), &Unlimited).await.unwrap();
    assert_eq!(counts(&done[0].outcome), expected, "{done:?}");
    assert_eq!(w.check_upload().await, expected);
    // Disjoint (checked above), so these say the chunks cover rows 1 to 1500 exactly.
    let coverage =
        "SELECT (sum(last_row - first_row + 1) = 1500 AND min(first_row) = 1 AND max(last_row) = 1500)::int::bigint
                    FROM upload_chunks";
    assert_eq!(w.scalar(coverage).await, 1, "the committed chunks cover the file");
    let report = w.objects.get_bytes(&w.bucket, "rejects/mixed.csv.rejects.csv").await.unwrap();
    let lines = String::from_utf8(report).unwrap().lines().count() as u64;
    assert_eq!(lines, expected.2 + 1, "every rejected row in the report, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_chunks_make_consistent_batches_and_count_repeats_once() {
    let w = world_with(SlicerSettings {
        chunk_rows: 7,
        writers: 4,
        reserve: Duration::from_secs(1),
        ..SlicerSettings::default()
    })
    .await;
    let (body, expected) = mixed_rows(700);
    let etag = w.put("incoming/mixed.csv", body).await;
    let done = w.slice("incoming/mixed.csv", &etag).await;
    assert_eq!(counts(&done), expected);
    assert_eq!(w.check_upload().await, expected);
    // Per chunk and campaign: the fresh clicks fill batches of the campaign's size in row order.
    let wrong = w
        .scalar(
            "SELECT count(*) FROM (
                 SELECT k.first_row, c.campaign_id, count(*) AS clicks, count(DISTINCT c.batch_id) AS batches,
                        max(m.batch_size) AS size
                 FROM clicks c JOIN upload_chunks k ON c.row_number BETWEEN k.first_row AND k.last_row
                 JOIN campaigns m USING (campaign_id)
                 GROUP BY k.first_row, c.campaign_id) per_chunk
             WHERE batches <> (clicks + size - 1) / size",
        )
        .await;
    assert_eq!(wrong, 0);
    // The same file again, as another object: every click a duplicate, counted once per row.
    let etag = w.put("incoming/mixed-again.csv", mixed_rows(700).0).await;
    let again = w.slice("incoming/mixed-again.csv", &etag).await;
    assert_eq!(counts(&again), (expected.0, 0, expected.2, expected.1 + expected.3));
}

#[tokio::test]
async fn a_chunk_lost_between_committed_ones_is_written_on_resume() {
    let w = world(100).await;
    let etag = w.put("incoming/spring/big.csv", csv_rows(0..1050)).await;
    let ev = || event(&[(&w.bucket, "incoming/spring/big.csv", &etag)]);
    let stopped = slicer::handle_event(&w.slicer, ev(), &ChunksLeft(AtomicU32::new(5))).await.unwrap_err();
    assert_eq!(counts(&stopped.reports[0].outcome), (500, 500, 0, 0));
    // As if the chunk of rows 201 to 300 had not committed while the ones after it had.
    w.uncommit_chunk(201, 300).await;
    assert_eq!(w.check_upload().await, (400, 400, 0, 0));

    let done = slicer::handle_event(&w.slicer, ev(), &Unlimited).await.unwrap();
    assert_eq!(counts(&done[0].outcome), (1050, 1050, 0, 0));
    assert_eq!(w.check_upload().await, (1050, 1050, 0, 0));
    assert_eq!(w.scalar("SELECT count(*) FROM upload_chunks WHERE first_row = 201 AND last_row = 300").await, 1);
    assert_eq!(w.scalar("SELECT count(DISTINCT row_number) FROM clicks").await, 1050);
}

#[tokio::test]
async fn progress_checkpointed_as_a_prefix_resumes_after_it() {
    let w = world(100).await;
    let etag = w.put("incoming/spring/big.csv", csv_rows(0..1050)).await;
    let ev = || event(&[(&w.bucket, "incoming/spring/big.csv", &etag)]);
    let stopped = slicer::handle_event(&w.slicer, ev(), &ChunksLeft(AtomicU32::new(3))).await.unwrap_err();
    assert_eq!(counts(&stopped.reports[0].outcome), (300, 300, 0, 0));
    // A slicer from before chunk ranges committed rows 101 to 300: counted in rows_done, without ranges.
    w.db.client().await.execute("DELETE FROM upload_chunks WHERE first_row > 100", &[]).await.unwrap();

    let done = slicer::handle_event(&w.slicer, ev(), &Unlimited).await.unwrap();
    assert_eq!(counts(&done[0].outcome), (1050, 1050, 0, 0));
    assert_eq!(w.check_upload().await, (1050, 1050, 0, 0));
    assert_eq!(w.scalar("SELECT count(*) FROM upload_chunks WHERE first_row = 101 AND last_row = 300").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_fences_the_previous_invocations_writes() {
    let w = world_with(SlicerSettings {
        chunk_rows: 50,
        writers: 3,
        reserve: Duration::from_secs(1),
        ..SlicerSettings::default()
    })
    .await;
    let (body, expected) = mixed_rows(20_000);
    let etag = w.put("incoming/mixed.csv", body).await;
    let ev = || event(&[(&w.bucket, "incoming/mixed.csv", &etag)]);

    // The first invocation is still writing when its lease expires and a second one takes the upload over.
    let first = w.own_slicer();
    let second = w.own_slicer();
    let takeover = std::sync::Arc::new(tokio::sync::Notify::new());
    let budget = SignalAfter { chunks: AtomicU32::new(3), signal: takeover.clone() };
    let (first_run, second_run) = tokio::join!(slicer::handle_event(&first, ev(), &budget), async {
        takeover.notified().await;
        w.expire_leases().await;
        slicer::handle_event(&second, ev(), &Unlimited).await
    });
    let second_run = second_run.unwrap();
    assert_eq!(counts(&second_run[0].outcome), expected, "the second invocation finishes the file: {second_run:?}");
    match first_run {
        Err(e) => assert!(e.details.contains("lease was lost"), "{e:?}"),
        Ok(reports) => panic!("the first invocation cannot finish an upload taken over: {reports:?}"),
    }
    assert_eq!(w.check_upload().await, expected);
}

#[tokio::test]
async fn a_campaign_that_cannot_be_loaded_rejects_only_its_own_rows() {
    let w = world(1000).await;
    // A zone PostgreSQL knows and the pacing engine does not.
    w.db.client()
        .await
        .execute("UPDATE campaigns SET time_zone = 'posix/America/New_York' WHERE campaign_id = 'summer'", &[])
        .await
        .unwrap();
    let etag = w.put("incoming/spring/a.csv", csv_rows(0..5)).await;
    assert_eq!(counts(&w.slice("incoming/spring/a.csv", &etag).await), (5, 5, 0, 0));

    let body = "click_id,campaign_id,clicked_at\nk1,spring,1764324000\nk2,summer,1764324000\nk3,spring,1764324000\n";
    let etag = w.put("incoming/mixed.csv", body).await;
    assert_eq!(counts(&w.slice("incoming/mixed.csv", &etag).await), (3, 2, 1, 0));
    let report = w.objects.get_bytes(&w.bucket, "rejects/mixed.csv.rejects.csv").await.unwrap();
    let report = String::from_utf8(report).unwrap();
    assert!(report.contains("campaign \"\"summer\"\" cannot take clicks"), "{report}");
    assert!(report.contains("posix/America/New_York"), "{report}");
}

#[tokio::test]
async fn the_bytes_named_by_the_event_are_ingested_even_when_the_key_was_overwritten_since() {
    let w = world(1000).await;
    // Versioned bucket: the event names version 1; version 2 has landed before the slicer reads.
    w.objects
        .client()
        .put_bucket_versioning()
        .bucket(&w.bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let v1 = w.put("incoming/spring/a.csv", csv_rows(0..5)).await;
    let v2 = w.put("incoming/spring/a.csv", csv_rows(100..103)).await;
    assert_ne!(v1, v2);
    let mut first = event(&[(&w.bucket, "incoming/spring/a.csv", "etag-of-v1")]);
    first.records[0].s3.object.version_id = Some(v1.clone());
    let reports = slicer::handle_event(&w.slicer, first, &Unlimited).await.unwrap();
    assert_eq!(counts(&reports[0].outcome), (5, 5, 0, 0));
    let mut second = event(&[(&w.bucket, "incoming/spring/a.csv", "etag-of-v2")]);
    second.records[0].s3.object.version_id = Some(v2);
    let reports = slicer::handle_event(&w.slicer, second, &Unlimited).await.unwrap();
    assert_eq!(counts(&reports[0].outcome), (3, 3, 0, 0));
    assert_eq!(w.scalar("SELECT count(*) FROM clicks WHERE click_id IN ('c0', 'c4', 'c100', 'c102')").await, 4);

    // Unversioned bucket: the event's ETag no longer matches, and the new bytes are not taken under the old
    // identity (their own event ingests them).
    let w = world(1000).await;
    let e1 = w.put("incoming/spring/b.csv", csv_rows(0..5)).await;
    let e2 = w.put("incoming/spring/b.csv", csv_rows(100..103)).await;
    let outcome = w.slice("incoming/spring/b.csv", &e1).await;
    assert!(matches!(&outcome, UploadOutcome::Ignored { reason } if reason.contains("overwritten")), "{outcome:?}");
    assert_eq!(w.scalar("SELECT count(*) FROM clicks").await, 0);
    assert_eq!(counts(&w.slice("incoming/spring/b.csv", &e2).await), (3, 3, 0, 0));
}

#[tokio::test]
async fn a_file_with_more_rows_than_allowed_keeps_the_rows_before_the_limit() {
    let w = world_with(limited(IngestLimits { max_rows: 6, ..IngestLimits::default() })).await;
    let etag = w.put("incoming/spring/long.csv", csv_rows(0..10)).await;
    let outcome = w.slice("incoming/spring/long.csv", &etag).await;
    assert!(
        matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("more than 6 rows")),
        "{outcome:?}"
    );
    assert_eq!(counts(&outcome), (7, 6, 1, 0), "six rows kept, the seventh is where reading stopped");
    assert_eq!(w.stored().await.0, 6);
    let lines = report_lines(&w, "incoming/spring/long.csv").await;
    assert!(lines.len() == 1 && lines[0].starts_with("7,") && lines[0].contains("SLICER_MAX_ROWS"), "{lines:?}");
}

#[tokio::test]
async fn a_gzip_bomb_stops_at_the_decompressed_limit_and_keeps_what_came_before() {
    let w = world_with(limited(IngestLimits { max_decompressed_bytes: 2_000, ..IngestLimits::default() })).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(csv_rows(0..1_000).as_bytes()).unwrap();
    let body = gz.finish().unwrap();
    let etag = w.put("incoming/spring/bomb.csv.gz", body).await;
    let outcome = w.slice("incoming/spring/bomb.csv.gz", &etag).await;
    assert!(
        matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("decompresses to more than 2000 bytes")),
        "{outcome:?}"
    );
    let (rows, accepted, rejected, duplicate) = counts(&outcome);
    assert!(accepted > 10 && accepted < 40, "the rows within the first 2,000 bytes: {accepted}");
    assert_eq!((rows, rejected, duplicate), (accepted + 1, 1, 0));
    assert_eq!(w.stored().await.0 as u64, accepted);
    let lines = report_lines(&w, "incoming/spring/bomb.csv.gz").await;
    assert!(lines[0].starts_with(&format!("{},", accepted + 1)), "{lines:?}");
}

#[tokio::test]
async fn an_unterminated_quote_ends_the_file_without_reading_the_rest_into_one_row() {
    let w = world_with(limited(IngestLimits { max_row_bytes: 1_000, ..IngestLimits::default() })).await;
    let mut body = csv_rows(0..5);
    body.push_str("c5,1764324000,10.0.0.5,\"Mozilla");
    body.push_str(&"x".repeat(3 << 20));
    let etag = w.put("incoming/spring/quote.csv", body).await;
    let outcome = w.slice("incoming/spring/quote.csv", &etag).await;
    assert!(matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("row 6")), "{outcome:?}");
    assert_eq!(counts(&outcome), (6, 5, 1, 0));
    assert_eq!(w.stored().await.0, 5);
}

#[tokio::test]
async fn an_overlong_json_line_is_rejected_and_the_lines_after_it_are_kept() {
    let w = world_with(limited(IngestLimits { max_row_bytes: 100, ..IngestLimits::default() })).await;
    let long = format!("{{\"click_id\": \"long\", \"clicked_at\": 1764324000, \"pad\": \"{}\"}}", "y".repeat(1 << 20));
    let body = format!(
        "{{\"click_id\": \"a\", \"clicked_at\": 1764324000}}\n{long}\n{{\"click_id\": \"b\", \"clicked_at\": 1764324000}}\n"
    );
    let etag = w.put("incoming/spring/lines.ndjson", body).await;
    let outcome = w.slice("incoming/spring/lines.ndjson", &etag).await;
    assert!(matches!(outcome, UploadOutcome::Completed { .. }), "{outcome:?}");
    assert_eq!(counts(&outcome), (3, 2, 1, 0));
    let lines = report_lines(&w, "incoming/spring/lines.ndjson").await;
    assert!(lines[0].starts_with("2,row is longer than 100 bytes"), "{lines:?}");
    assert!(lines[0].len() < 4_000, "the report repeats only the start of the row");
}

#[tokio::test]
async fn an_object_larger_than_allowed_is_refused_before_reading() {
    let w = world_with(limited(IngestLimits { max_object_bytes: 100, ..IngestLimits::default() })).await;
    let etag = w.put("incoming/spring/big.csv", csv_rows(0..10)).await;
    let outcome = w.slice("incoming/spring/big.csv", &etag).await;
    assert!(
        matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("more than the limit of 100 bytes")),
        "{outcome:?}"
    );
    assert_eq!(counts(&outcome), (0, 0, 0, 0));
}

/// Each chunk takes a while (a slow database, a huge file): an invocation outlives its first lease.
struct SlowChunks(Duration);
impl TimeBudget for SlowChunks {
    fn remaining(&self) -> Duration {
        std::thread::sleep(self.0);
        Duration::from_secs(3600)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_of_a_crashed_invocation_takes_the_upload_over_by_itself() {
    let w = world_with(SlicerSettings {
        chunk_rows: 50,
        reserve: Duration::from_secs(1),
        lease_for: Duration::from_secs(2),
        ..SlicerSettings::default()
    })
    .await;
    let etag = w.put("incoming/spring/big.csv", csv_rows(0..1000)).await;
    let ev = || event(&[(&w.bucket, "incoming/spring/big.csv", &etag)]);

    // The invocation dies after a few chunks (its future and its connections are gone; its lease is left).
    let slicer = w.own_slicer();
    let kill = std::sync::Arc::new(tokio::sync::Notify::new());
    let budget = SignalAfter { chunks: AtomicU32::new(4), signal: kill.clone() };
    tokio::select! {
        biased;
        () = kill.notified() => {}
        finished = slicer::handle_event(&slicer, ev(), &budget) => panic!("not killed: {finished:?}"),
    }
    drop(slicer);
    assert_eq!(w.scalar("SELECT count(*) FROM uploads WHERE lease_owner IS NOT NULL").await, 1, "lease left");

    // Lambda's retry comes at once: it waits for the dead holder's lease to run out and finishes the upload,
    // instead of answering "in progress elsewhere" and ending the retries.
    let done = slicer::handle_event(&w.slicer, ev(), &Unlimited).await.unwrap();
    assert_eq!(counts(&done[0].outcome), (1000, 1000, 0, 0), "{done:?}");
    assert_eq!(w.stored().await.0, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_invocation_keeps_its_lease_and_a_duplicate_event_leaves_the_upload_to_it() {
    let w = world_with(SlicerSettings {
        chunk_rows: 100,
        reserve: Duration::from_secs(1),
        lease_for: Duration::from_secs(1),
        ..SlicerSettings::default()
    })
    .await;
    let etag = w.put("incoming/spring/slow.csv", csv_rows(0..1000)).await;
    let ev = || event(&[(&w.bucket, "incoming/spring/slow.csv", &etag)]);
    // Ten chunks of 250 ms: the holder outlives its first lease four times over and must renew it.
    let slow = SlowChunks(Duration::from_millis(250));
    let holder = slicer::handle_event(&w.slicer, ev(), &slow);
    let duplicate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slicer::handle_event(&w.slicer, ev(), &Unlimited).await
    };
    let (held, dup) = tokio::join!(holder, duplicate);
    let held = held.unwrap();
    assert_eq!(counts(&held[0].outcome), (1000, 1000, 0, 0), "{held:?}");
    let dup = dup.unwrap();
    assert!(
        matches!(dup[0].outcome, UploadOutcome::InProgressElsewhere { .. } | UploadOutcome::AlreadyFinished { .. }),
        "{dup:?}"
    );
    assert_eq!(w.stored().await.0, 1000);
}
