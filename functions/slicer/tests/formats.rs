//! The files data teams really have: every accepted format, compression and mapping, against real PostgreSQL
//! and the local S3.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use clickpacer::domain::{Campaign, CampaignId, PartnerId};
use clickpacer::ingest::{Delimiter, IngestMapping, KnownField, TimestampZone};
use clickpacer::invocation::Unlimited;
use clickpacer::postgres::campaigns;
use slicer::UploadOutcome;

mod common;
use common::*;

/// Gives the `spring` campaign an ingest mapping (and a time zone).
async fn map_spring(w: &World, mapping: IngestMapping, time_zone: chrono_tz::Tz) {
    let mut spring = Campaign::unlimited(CampaignId::parse("spring").unwrap(), PartnerId::parse("acme").unwrap());
    spring.batch_size = 10;
    spring.time_zone = time_zone;
    spring.ingest = mapping;
    campaigns::upsert(&**w.db.client().await, &spring).await.unwrap();
}

async fn texts(w: &World, sql: &str) -> Vec<String> {
    w.db.client().await.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn bzip2(bytes: &[u8]) -> Vec<u8> {
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(bytes).unwrap();
    bz.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

#[tokio::test]
async fn csv_with_any_common_delimiter_a_bom_and_crlf() {
    let w = world(1000).await;
    for (name, delimiter) in [("semi", ';'), ("tab", '\t'), ("pipe", '|'), ("comma", ',')] {
        let d = delimiter;
        let body = format!(
            "\u{feff}click_id{d}clicked_at{d}ip{d}note\r\n\
             {name}-1{d}2026-11-28T10:00:00Z{d}10.0.0.1{d}\"quoted {d} and \"\"inner\"\" text\"\r\n\
             {name}-2{d}1764324000{d}{d}plain\r\n"
        );
        let key = format!("incoming/spring/{name}.csv");
        let etag = w.put(&key, body).await;
        assert_eq!(counts(&w.slice(&key, &etag).await), (2, 2, 0, 0), "{name}");
    }
    let notes = texts(&w, "SELECT attributes->>'note' FROM clicks WHERE click_id LIKE '%-1' ORDER BY click_id").await;
    assert_eq!(notes.len(), 4);
    for (note, d) in notes.iter().zip([",", "|", ";", "\t"]) {
        assert_eq!(note, &format!("quoted {d} and \"inner\" text"), "quoted fields keep their delimiters");
    }

    // A delimiter set on the campaign wins over detection: this header has as many commas as semicolons.
    map_spring(&w, IngestMapping { csv_delimiter: Some(Delimiter::Semicolon), ..Default::default() }, chrono_tz::UTC)
        .await;
    let etag = w.put("incoming/spring/set.csv", "click_id;clicked_at;a,b,c\ns-1;1764324000;x,y,z\n").await;
    assert_eq!(counts(&w.slice("incoming/spring/set.csv", &etag).await), (1, 1, 0, 0));
    assert_eq!(texts(&w, "SELECT attributes->>'a,b,c' FROM clicks WHERE click_id = 's-1'").await, ["x,y,z"]);
}

#[tokio::test]
async fn ndjson_rows_with_nested_attributes_are_all_kept() {
    let w = world(1000).await;
    let body: String = (0..100)
        .map(|i| format!("{{\"click_id\":\"n{i}\",\"ts\":1764324000,\"extra\":{{\"k\":[1,2]}},\"flag\":true}}\n"))
        .collect();
    let etag = w.put("incoming/spring/nested.ndjson", body).await;
    assert_eq!(counts(&w.slice("incoming/spring/nested.ndjson", &etag).await), (100, 100, 0, 0));
    let extras =
        texts(&w, "SELECT DISTINCT (attributes->'extra')::text || (attributes->'flag')::text FROM clicks").await;
    assert_eq!(extras, [r#"{"k": [1, 2]}true"#]);
}

#[tokio::test]
async fn a_pretty_printed_json_array_yields_its_clicks_and_a_reject_per_bad_element() {
    let w = world(7).await;
    let mut elements: Vec<serde_json::Value> = (0..30)
        .map(|i| {
            serde_json::json!({"click_id": format!("j{i}"), "clicked_at": "2026-11-28 10:00:00",
                               "ip": "10.0.0.1", "extra": {"k": [i, i + 1]}})
        })
        .collect();
    elements.insert(10, serde_json::json!({"click_id": "bad", "clicked_at": "soon"}));
    elements.insert(20, serde_json::json!(["not", "an", "object"]));
    let body = serde_json::to_string_pretty(&elements).unwrap();
    assert!(body.lines().count() > 180, "spread over many lines");
    let etag = w.put("incoming/spring/export.json", body).await;
    let outcome = w.slice("incoming/spring/export.json", &etag).await;
    assert_eq!(counts(&outcome), (32, 30, 2, 0), "{outcome:?}");
    let lines = report_lines(&w, "incoming/spring/export.json").await;
    assert!(lines[0].starts_with("11,\"unparseable clicked_at \"\"soon\"\""), "{lines:?}");
    assert!(lines[0].contains(",clicked_at,"), "the field that failed: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("21,not a JSON object")), "{lines:?}");

    // The same clicks gzip-compressed and without a telling extension: the bytes decide.
    let etag = w.put("incoming/spring/export-again", gzip(serde_json::to_string(&elements).unwrap().as_bytes())).await;
    assert_eq!(counts(&w.slice("incoming/spring/export-again", &etag).await), (32, 0, 2, 30));

    // A truncated array keeps what came before its end and says why it failed.
    let etag = w.put("incoming/spring/cut.json", "[{\"click_id\":\"t1\",\"ts\":1764324000},{\"click_id\":\"t2\"").await;
    let outcome = w.slice("incoming/spring/cut.json", &etag).await;
    assert!(
        matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("closing bracket")),
        "{outcome:?}"
    );
    assert_eq!(counts(&outcome), (2, 1, 1, 0));
}

#[tokio::test]
async fn gzip_members_zstd_frames_and_bzip2_by_extension_encoding_and_magic() {
    let w = world(1000).await;
    let all = csv_rows(0..60);
    let (head, tail) = all.split_at(all.match_indices('\n').nth(30).unwrap().0 + 1);
    // Two gzip members, two zstd frames: what `cat a.gz b.gz` and parallel compressors make.
    let two_gzip_members = [gzip(head.as_bytes()), gzip(tail.as_bytes())].concat();
    let two_zstd_frames = [zstd(head.as_bytes()), zstd(tail.as_bytes())].concat();
    let cases: [(&str, Vec<u8>, Option<&str>); 6] = [
        ("incoming/spring/a.csv.gz", two_gzip_members, None),
        ("incoming/spring/b.csv.zst", two_zstd_frames, None),
        ("incoming/spring/c.csv.bz2", bzip2(all.as_bytes()), None),
        ("incoming/spring/d.csv", zstd(all.as_bytes()), Some("zstd")),
        ("incoming/spring/e.csv", bzip2(all.as_bytes()), None),
        ("incoming/spring/f", zstd(all.as_bytes()), None),
    ];
    for (i, (key, body, encoding)) in cases.into_iter().enumerate() {
        let mut put = w.objects.client().put_object().bucket(&w.bucket).key(key).body(body.into());
        if let Some(encoding) = encoding {
            put = put.content_encoding(encoding);
        }
        put.send().await.unwrap();
        let (info, _) = w.objects.open(&w.bucket, key).await.unwrap();
        let expected = if i == 0 { (60, 60, 0, 0) } else { (60, 0, 0, 60) };
        assert_eq!(counts(&w.slice(key, &info.version).await), expected, "{key}");
    }
    assert_eq!(w.stored().await.0, 60);

    for (key, body) in [
        ("incoming/spring/broken.csv.zst", b"\x28\xb5\x2f\xfdgarbage".to_vec()),
        ("incoming/spring/broken.csv.bz2", b"BZh9garbage".to_vec()),
    ] {
        let etag = w.put(key, body).await;
        let outcome = w.slice(key, &etag).await;
        let name = if key.ends_with("zst") { "zstd" } else { "bzip2" };
        assert!(
            matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("not valid compressed data") && reason.contains(name)),
            "{outcome:?}"
        );
    }
}

/// A Parquet file of the shape warehouse unloads write: string ids, a timestamp column, an optional string with
/// nulls, an integer attribute; a row group per `(start, end)` of `groups`, rows `start..end`.
fn parquet_file(groups: &[(i64, i64)]) -> Vec<u8> {
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;

    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message clicks {
                required binary click_id (STRING);
                required int64 click_time (TIMESTAMP(MILLIS, true));
                optional binary ip (STRING);
                required int32 app;
            }",
        )
        .unwrap(),
    );
    let properties = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, properties).unwrap();
    for &(start, end) in groups {
        let rows = start..end;
        let mut group = writer.next_row_group().unwrap();
        let ids: Vec<ByteArray> = rows.clone().map(|i| ByteArray::from(format!("p{i}").as_str())).collect();
        let mut column = group.next_column().unwrap().unwrap();
        column.typed::<ByteArrayType>().write_batch(&ids, None, None).unwrap();
        column.close().unwrap();
        let times: Vec<i64> = rows.clone().map(|i| 1_764_324_000_000 + i).collect();
        let mut column = group.next_column().unwrap().unwrap();
        column.typed::<Int64Type>().write_batch(&times, None, None).unwrap();
        column.close().unwrap();
        // Every third row has no ip.
        let levels: Vec<i16> = rows.clone().map(|i| i16::from(i % 3 != 0)).collect();
        let ips: Vec<ByteArray> = rows
            .clone()
            .filter(|i| i % 3 != 0)
            .map(|i| ByteArray::from(format!("10.0.{}.{}", i / 256 % 256, i % 256).as_str()))
            .collect();
        let mut column = group.next_column().unwrap().unwrap();
        column.typed::<ByteArrayType>().write_batch(&ips, Some(&levels), None).unwrap();
        column.close().unwrap();
        let apps: Vec<i32> = rows.clone().map(|i| (i % 7) as i32).collect();
        let mut column = group.next_column().unwrap().unwrap();
        column.typed::<Int32Type>().write_batch(&apps, None, None).unwrap();
        column.close().unwrap();
        group.close().unwrap();
    }
    writer.close().unwrap();
    out
}

#[tokio::test]
async fn parquet_row_groups_are_read_and_a_stopped_read_resumes_past_committed_groups() {
    let w = world(100).await;
    let body = parquet_file(&[(0, 250), (250, 500), (500, 640)]);
    let etag = w.put("incoming/spring/unload.parquet", body).await;
    let ev = || event(&[(&w.bucket, "incoming/spring/unload.parquet", &etag)]);

    let stopped = slicer::handle_event(&w.slicer, ev(), &ChunksLeft(AtomicU32::new(3))).await.unwrap_err();
    assert_eq!(counts(&stopped.reports[0].outcome), (300, 300, 0, 0));
    let done = slicer::handle_event(&w.slicer, ev(), &Unlimited).await.unwrap();
    assert_eq!(counts(&done[0].outcome), (640, 640, 0, 0));
    assert_eq!(w.stored().await.0, 640);
    assert_eq!(w.scalar("SELECT count(DISTINCT click_id) FROM clicks").await, 640);
    let row = texts(
        &w,
        "SELECT concat_ws(' ', to_char(clicked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), host(ip),
                attributes->>'app') FROM clicks WHERE click_id IN ('p3', 'p4') ORDER BY click_id",
    )
    .await;
    assert_eq!(row, ["2025-11-28 10:00:00.003 3", "2025-11-28 10:00:00.004 10.0.0.4 4"]);

    // The same file without its extension is known by its first bytes.
    let etag = w.put("incoming/spring/unload", parquet_file(&[(0, 10)])).await;
    assert_eq!(counts(&w.slice("incoming/spring/unload", &etag).await), (10, 0, 0, 10));

    let etag = w.put("incoming/spring/broken.parquet", b"PAR1 not really".to_vec()).await;
    let outcome = w.slice("incoming/spring/broken.parquet", &etag).await;
    assert!(
        matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("not a readable Parquet file")),
        "{outcome:?}"
    );
}

/// A raw click log: no click id, naive times, the columns of an app-install click export.
fn click_log() -> String {
    let mut body = String::from("ip,app,device,os,channel,click_time\n");
    for i in 0..40 {
        body.push_str(&format!("10.0.0.{},{},1,13,{},2017-11-06 14:{:02}:10\n", i % 20, i % 3, 400 + i % 5, i));
    }
    body
}

#[tokio::test]
async fn a_click_log_without_ids_gets_derived_ids_and_a_second_upload_is_only_duplicates() {
    let w = world(1000).await;
    let etag = w.put("incoming/spring/log.csv", click_log()).await;
    let outcome = w.slice("incoming/spring/log.csv", &etag).await;
    assert!(
        matches!(&outcome, UploadOutcome::Failed { reason, .. } if reason.contains("ingest.derive_click_id_from")),
        "without a mapping the answer says how to map: {outcome:?}"
    );

    let mapping = IngestMapping {
        derive_click_id_from: ["ip", "app", "device", "os", "channel", "click_time"].map(String::from).to_vec(),
        ..Default::default()
    };
    map_spring(&w, mapping, chrono_tz::UTC).await;
    let etag = w.put("incoming/spring/log-1.csv", click_log()).await;
    assert_eq!(counts(&w.slice("incoming/spring/log-1.csv", &etag).await), (40, 40, 0, 0));
    let etag = w.put("incoming/spring/log-2.csv", click_log()).await;
    assert_eq!(counts(&w.slice("incoming/spring/log-2.csv", &etag).await), (40, 0, 0, 40), "only duplicates");
    assert_eq!(w.stored().await.0, 40);
    let ids = texts(&w, "SELECT click_id FROM clicks WHERE attributes->>'channel' = '400' ORDER BY clicked_at").await;
    assert_eq!(
        ids[0],
        clickpacer::ingest::mapping::derive_click_id(["10.0.0.0", "0", "1", "13", "400", "2017-11-06 14:00:10"])
    );
}

#[tokio::test]
async fn naive_times_on_a_dst_day_are_read_in_the_campaigns_zone() {
    let w = world(1000).await;
    let mapping = IngestMapping {
        columns: [(KnownField::ClickedAt, "Event Time".to_owned())].into(),
        timestamp_zone: TimestampZone::Campaign,
        ..Default::default()
    };
    map_spring(&w, mapping, chrono_tz::America::New_York).await;
    // 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT; "time" is only an attribute now, "Event Time" mapped.
    let body = "click_id,Event Time,time\n\
                d1,2026-03-08 01:30:00,x\n\
                d2,2026-03-08 02:30:00,x\n\
                d3,2026-03-08 03:30:00.250,x\n\
                d4,2026-03-08T12:00:00,x\n\
                d5,2026-03-08 12:00:00Z,x\n";
    let etag = w.put("incoming/spring/dst.csv", body).await;
    assert_eq!(counts(&w.slice("incoming/spring/dst.csv", &etag).await), (5, 5, 0, 0));
    let times = texts(
        &w,
        "SELECT to_char(clicked_at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS') || ' ' || (attributes->>'time')
         FROM clicks ORDER BY click_id",
    )
    .await;
    // The gap's 02:30 is moved forward by the gap's hour, to 03:30 EDT: the same instant as d3 but for its 250 ms.
    assert_eq!(times, ["06:30:00.000 x", "07:30:00.000 x", "07:30:00.250 x", "16:00:00.000 x", "12:00:00.000 x"]);
}

#[tokio::test]
async fn a_file_every_row_of_which_fails_for_one_reason_says_so_and_counts_reasons() {
    let w = world(1000).await;
    let etag = w.put("incoming/ghost/a.csv", csv_rows(0..5)).await;
    let outcome = w.slice("incoming/ghost/a.csv", &etag).await;
    assert_eq!(counts(&outcome), (5, 0, 5, 0));
    let (detail, reasons): (String, serde_json::Value) = {
        let row = w.db.client().await.query_one("SELECT status_detail, reject_counts FROM uploads", &[]).await.unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(detail, "every row (5) was rejected: unknown campaign \"ghost\"");
    assert_eq!(reasons, serde_json::json!({"unknown_campaign": 5}));

    let mut body = csv_rows(0..3);
    body.push_str(",1764324000,,,,\nx1,soon,,,,\nx2,later,,,,\n");
    let etag = w.put("incoming/spring/mixed.csv", body).await;
    assert_eq!(counts(&w.slice("incoming/spring/mixed.csv", &etag).await), (6, 3, 3, 0));
    let row =
        w.db.client()
            .await
            .query_one(
                "SELECT status_detail, reject_counts FROM uploads WHERE object_key = 'incoming/spring/mixed.csv'",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None, "mixed reasons: no upload-level reason");
    assert_eq!(row.get::<_, serde_json::Value>(1), serde_json::json!({"invalid_clicked_at": 2, "missing_click_id": 1}));
}

#[tokio::test]
async fn json_files_longer_than_the_row_limits_read_ahead_are_read_to_the_end() {
    // The reader's check for a CSV record running on (an unterminated quote) must not count a JSON file's bytes
    // as one record: 3 MiB of rows, well past the 1.3 MiB that check allows one record.
    let w = world(10_000).await;
    let ndjson: String = (0..30_000)
        .map(|i| format!("{{\"click_id\":\"l{i}\",\"ts\":1764324000,\"pad\":\"{}\"}}\n", "x".repeat(64)))
        .collect();
    assert!(ndjson.len() > 3 << 20);
    let etag = w.put("incoming/spring/long.ndjson", ndjson).await;
    assert_eq!(counts(&w.slice("incoming/spring/long.ndjson", &etag).await), (30_000, 30_000, 0, 0));
    let array = format!(
        "[{}]",
        (0..30_000)
            .map(|i| format!("{{\"click_id\":\"a{i}\",\"ts\":1764324000,\"pad\":\"{}\"}}", "x".repeat(64)))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    let etag = w.put("incoming/spring/long.json", array).await;
    assert_eq!(counts(&w.slice("incoming/spring/long.json", &etag).await), (30_000, 30_000, 0, 0));
}
