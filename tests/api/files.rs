//! FIL-1 … FIL-5: files are sealed before they reach any store, served only
//! after they verify, private by default, inert when downloaded, logged,
//! and kept redundantly.

use crate::helpers::RunOff;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, problem, spawn_app, spawn_app_with, temp_dir};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

/// A PNG-looking file of `size` bytes that repeats `marker` throughout.
fn png_with(marker: &str, size: usize) -> Vec<u8> {
    let mut bytes = PNG.to_vec();
    while bytes.len() < size {
        bytes.extend_from_slice(marker.as_bytes());
        bytes.push(b'\n');
    }
    bytes.truncate(size);
    bytes
}

async fn assets(app: &TestApp, admin: &Session) -> String {
    let res = app
        .post(
            "/api/v1/collections",
            Some(&admin.access_token),
            json!({"name": "assets", "fields": [
                {"name": "title", "type": "text", "required": true},
                {"name": "photos", "type": "file", "max_files": 3, "max_size": 2_000_000},
                {"name": "manual", "type": "file", "accept": ["application/pdf"]},
                {"name": "contract", "type": "file", "personal": true}
            ]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app
        .post(
            "/api/v1/collections/assets/records",
            Some(&admin.access_token),
            json!({"title": "Pump 7"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

fn files_path(record: &str, last: &str) -> String {
    format!("/api/v1/collections/assets/records/{record}/files/{last}")
}

async fn upload_ok(
    app: &TestApp,
    admin: &Session,
    record: &str,
    field: &str,
    name: &str,
    bytes: &[u8],
) -> Value {
    let res = app
        .upload(
            &admin.access_token,
            &files_path(record, field),
            name,
            "text/html",
            bytes,
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    res.json().await.unwrap()
}

async fn download(app: &TestApp, token: &str, record: &str, file: &str) -> reqwest::Response {
    app.get(&files_path(record, file), token).await
}

#[tokio::test]
async fn ctl_fil_1_files_are_sealed_in_the_object_store_and_come_back_intact() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let marker = format!("PLAINTEXT-{}", uuid::Uuid::new_v4().simple());
    // Several chunks of the streaming construction, plus a ragged end.
    let bytes = png_with(&marker, 700_001);
    let info = upload_ok(
        &app,
        &admin,
        &record,
        "photos",
        "../../etc/pump-passwd.png",
        &bytes,
    )
    .await;
    assert_eq!(
        info["content_type"], "image/png",
        "sniffed, not the claimed text/html"
    );
    assert_eq!(info["size"], json!(bytes.len()));
    assert_eq!(
        info["name"], "pump-passwd.png",
        "path components are dropped"
    );
    let sha = {
        use sha2::Digest;
        strongroom::audit::chain::to_hex(&sha2::Sha256::digest(&bytes))
    };
    assert_eq!(info["sha256"], json!(sha));
    let file_id = info["id"].as_str().unwrap();

    // The record lists the file.
    let rec: Value = app
        .get(
            &format!("/api/v1/collections/assets/records/{record}"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rec["photos"][0]["id"], json!(file_id));
    assert_eq!(rec["version"], 2);

    // Back in full, inert.
    let res = download(&app, &admin.access_token, &record, file_id).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("sandbox") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(h["etag"], format!("\"{sha}\"").as_str());
    let disposition = h["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(disposition.contains("pump-passwd.png"), "{disposition}");
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Nothing in the store is plaintext; no key carries the client's name.
    let objects = app.objects(0).await;
    assert_eq!(
        objects.len(),
        1,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (key, raw) in &objects {
        assert!(!key.contains("passwd") && !key.contains(".."), "{key}");
        assert!(key.ends_with(file_id), "{key}");
        assert!(
            !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "plaintext in {key}"
        );
        assert!(
            !raw.windows(8).any(|w| w == &PNG[..8]),
            "file header in clear in {key}"
        );
    }
    // Nor is the file name kept in clear in the database.
    let mut conn = app.raw().await;
    let name_cell: String = sqlx::query_scalar("SELECT name FROM files")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!name_cell.contains("passwd"), "{name_cell}");

    // A personal file field keeps even its descriptors sealed in the record.
    let pdf = b"%PDF-1.7\nsigned contract of Jana Novak\n".to_vec();
    upload_ok(
        &app,
        &admin,
        &record,
        "contract",
        "novak-contract.pdf",
        &pdf,
    )
    .await;
    let data: String = match crate::helpers::is_postgres() {
        true => sqlx::query_scalar("SELECT data::text FROM records")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
        false => sqlx::query_scalar("SELECT data FROM records")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
    };
    assert!(!data.contains("novak"), "{data}");
    assert!(
        data.contains("pump-passwd.png"),
        "ordinary file fields list names in clear: {data}"
    );

    // Delete: gone from the API and from the store.
    let res = app
        .delete(&files_path(&record, file_id), &admin.access_token)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    problem(
        download(&app, &admin.access_token, &record, file_id).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let left: Vec<String> = app.objects(0).await.into_iter().map(|o| o.0).collect();
    assert!(!left.iter().any(|k| k.ends_with(file_id)), "{left:?}");
    let rec: Value = app
        .get(
            &format!("/api/v1/collections/assets/records/{record}"),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(rec.get("photos").is_none(), "{rec}");

    // Deleting the record sweeps its remaining files too.
    assert_eq!(app.objects(0).await.len(), 1);
    let res = app
        .delete(
            &format!("/api/v1/collections/assets/records/{record}"),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(app.objects(0).await.is_empty());
}

#[tokio::test]
async fn ctl_fil_4_uploads_are_sniffed_and_limited_and_a_refusal_stores_nothing() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let token = admin.access_token.clone();

    // Over the field's 2 MB limit: 413, nothing stored, record unchanged.
    let big = png_with("x", 2_500_000);
    let res = app
        .upload(
            &token,
            &files_path(&record, "photos"),
            "big.png",
            "image/png",
            &big,
        )
        .await;
    problem(res, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert!(app.objects(0).await.is_empty());
    let left = app.local_store_files();
    assert!(left.is_empty(), "an aborted upload left {left:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM files").await, 0);
    let rec: Value = app
        .get(
            &format!("/api/v1/collections/assets/records/{record}"),
            &token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rec["version"], 1, "{rec}");

    // Active content is refused whatever the client calls it.
    let html = b"<!DOCTYPE html><script>alert(document.cookie)</script>";
    let res = app
        .upload(
            &token,
            &files_path(&record, "photos"),
            "cat.png",
            "image/png",
            html,
        )
        .await;
    let body = problem(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert!(
        body["detail"].as_str().unwrap().contains("text/html"),
        "{body}"
    );
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>";
    let res = app
        .upload(
            &token,
            &files_path(&record, "photos"),
            "logo.svg",
            "image/svg+xml",
            svg,
        )
        .await;
    problem(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    // A field that accepts PDF only refuses a PNG.
    let res = app
        .upload(
            &token,
            &files_path(&record, "manual"),
            "m.pdf",
            "application/pdf",
            PNG,
        )
        .await;
    problem(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert!(app.objects(0).await.is_empty());

    // max_files: the fourth photo is refused and its object removed.
    for i in 0..3 {
        upload_ok(
            &app,
            &admin,
            &record,
            "photos",
            &format!("p{i}.png"),
            &png_with("p", 100),
        )
        .await;
    }
    let res = app
        .upload(
            &token,
            &files_path(&record, "photos"),
            "p4.png",
            "image/png",
            &png_with("p", 100),
        )
        .await;
    problem(res, StatusCode::CONFLICT).await;
    assert_eq!(app.objects(0).await.len(), 3);

    // Wrong targets.
    let res = app
        .upload(
            &token,
            &files_path(&record, "title"),
            "a.png",
            "image/png",
            PNG,
        )
        .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let missing = files_path(&uuid::Uuid::now_v7().to_string(), "photos");
    problem(
        app.upload(&token, &missing, "a.png", "image/png", PNG)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let res = app
        .client
        .post(format!("{}{}", app.address, files_path(&record, "photos")))
        .bearer_auth(&token)
        .json(&json!({"file": "no"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error());
    // File fields change only through uploads.
    let res = app
        .patch(
            &format!("/api/v1/collections/assets/records/{record}"),
            &token,
            json!({"photos": []}),
        )
        .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    // Viewers download but cannot upload.
    let viewer = app.user(&admin, "viewer@acme.test", "viewer").await;
    let res = app
        .upload(
            &viewer.access_token,
            &files_path(&record, "photos"),
            "v.png",
            "image/png",
            PNG,
        )
        .await;
    problem(res, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn ctl_fil_2_other_tenants_get_404_and_signed_links_are_bound_and_expire() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let bytes = png_with("secret drawing", 5_000);
    let info = upload_ok(&app, &admin, &record, "photos", "drawing.png", &bytes).await;
    let file_id = info["id"].as_str().unwrap().to_owned();

    // Another tenant with the same collection name sees nothing.
    let other = app.admin("globex").await;
    let other_record = assets(&app, &other).await;
    for path in [
        files_path(&record, &file_id),
        files_path(&other_record, &file_id),
    ] {
        problem(
            app.get(&path, &other.access_token).await,
            StatusCode::NOT_FOUND,
        )
        .await;
        problem(
            app.delete(&path, &other.access_token).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    problem(
        app.get(
            &format!("{}?signed=1", files_path(&record, &file_id)),
            &other.access_token,
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // Without a token: 401.
    let res = app
        .client
        .get(format!("{}{}", app.address, files_path(&record, &file_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // A signed link works without a token.
    let res = app
        .get(
            &format!("{}?signed=1&expires_in=60", files_path(&record, &file_id)),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let link: Value = res.json().await.unwrap();
    let url = format!("{}{}", app.address, link["url"].as_str().unwrap());
    assert_eq!(link["expires_in"], 60);
    let res = app.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .split(';')
            .next(),
        Some("attachment")
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Altered in any part: 403.
    let other_file = upload_ok(&app, &other, &other_record, "photos", "o.png", PNG).await;
    let altered = [
        url.replace(&file_id, other_file["id"].as_str().unwrap()),
        url.replace(&admin.tenant_id, &other.tenant_id),
        url.replace("expires=", "expires=9"),
        {
            let (head, sig) = url.rsplit_once("signature=").unwrap();
            let flipped = if sig.starts_with('0') { "1" } else { "0" };
            format!("{head}signature={flipped}{}", &sig[1..])
        },
        url.split("&signature").next().unwrap().to_owned(),
    ];
    for bad in altered {
        let res = app.client.get(&bad).send().await.unwrap();
        problem(res, StatusCode::FORBIDDEN).await;
    }
    // Bounded lifetime.
    let res = app
        .get(
            &format!("{}?signed=1&expires_in=301", files_path(&record, &file_id)),
            &admin.access_token,
        )
        .await;
    problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let res = app
        .get(
            &format!("{}?signed=1&expires_in=1", files_path(&record, &file_id)),
            &admin.access_token,
        )
        .await;
    let short: Value = res.json().await.unwrap();
    let short_url = format!("{}{}", app.address, short["url"].as_str().unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    problem(
        app.client.get(&short_url).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    // A deleted file's link stops working too.
    app.delete(&files_path(&record, &file_id), &admin.access_token)
        .await;
    problem(
        app.client.get(&url).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn ctl_fil_3_uploads_downloads_and_signed_link_use_are_audited_and_access_logged() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let info = upload_ok(
        &app,
        &admin,
        &record,
        "photos",
        "a.png",
        &png_with("a", 1000),
    )
    .await;
    let file_id = info["id"].as_str().unwrap();
    assert_eq!(
        download(&app, &admin.access_token, &record, file_id)
            .await
            .status(),
        StatusCode::OK
    );
    let link: Value = app
        .get(
            &format!("{}?signed=1", files_path(&record, file_id)),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    let res = app
        .client
        .get(format!("{}{}", app.address, link["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    app.delete(&files_path(&record, file_id), &admin.access_token)
        .await;

    let events = app.audit(&admin).await;
    for action in [
        "file.upload",
        "file.download",
        "file.link",
        "file.download_signed",
        "file.delete",
    ] {
        let event = events
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} event"));
        assert_eq!(event["target"]["id"], json!(file_id), "{event}");
        assert_eq!(event["actor"]["id"], json!(admin.user_id), "{event}");
    }
    let log = app.access_log(&admin.access_token, "").await;
    let routes: Vec<(&str, &str)> = log
        .iter()
        .map(|r| (r["method"].as_str().unwrap(), r["route"].as_str().unwrap()))
        .collect();
    let file_route = "/api/v1/collections/{name}/records/{id}/files/{file}";
    for expected in [
        ("POST", file_route),
        ("GET", file_route),
        ("DELETE", file_route),
        ("GET", "/api/v1/files/{file}"),
    ] {
        assert!(routes.contains(&expected), "{expected:?} not in {routes:?}");
    }
    // The signed download is attributed to the tenant and the link's user;
    // the signature itself is not kept.
    let signed = log
        .iter()
        .find(|r| r["route"] == "/api/v1/files/{file}")
        .unwrap();
    assert_eq!(signed["actor_id"], json!(admin.user_id), "{signed}");
    assert_eq!(signed["tenant_id"], json!(admin.tenant_id), "{signed}");
    assert!(!signed.to_string().contains("signature="), "{signed}");
}

/// A file larger than what a download keeps from its check is read and
/// opened a second time as it is sent; that path too gives back the exact
/// bytes, and refuses a damaged object before sending any.
#[tokio::test]
async fn ctl_fil_1_a_file_too_large_to_keep_streams_back_intact_and_damage_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let size = strongroom::files::KEEP_BYTES as usize + 300_001;
    let bytes = png_with("streamed", size);
    let info = upload_ok(&app, &admin, &record, "contract", "big.png", &bytes).await;
    let file_id = info["id"].as_str().unwrap();

    let res = download(&app, &admin.access_token, &record, file_id).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-length"], size.to_string().as_str());
    let body = res.bytes().await.unwrap();
    assert!(
        body.as_ref() == bytes.as_slice(),
        "the streamed file differs"
    );

    flip_byte(&app, 0, size - 1000).await;
    let res = download(&app, &admin.access_token, &record, file_id).await;
    let body = problem(res, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(
        body["type"], "urn:strongroom:problem:integrity-error",
        "{body}"
    );
}

async fn flip_byte(app: &TestApp, store: usize, at: usize) {
    let target = &app.state.objects.targets()[store];
    for key in target.list_keys().await.unwrap() {
        let mut raw = target.raw_bytes(&key).await.unwrap().to_vec();
        let at = at.min(raw.len() - 1);
        raw[at] ^= 0x01;
        target.put_bytes(&key, raw.into()).await.unwrap();
    }
}

#[tokio::test]
async fn ctl_fil_5_a_flipped_or_truncated_object_is_an_integrity_error_never_served() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let bytes = png_with("integrity", 600_000);
    let info = upload_ok(&app, &admin, &record, "photos", "a.png", &bytes).await;
    let file_id = info["id"].as_str().unwrap();

    flip_byte(&app, 0, 400_000).await;
    let res = download(&app, &admin.access_token, &record, file_id).await;
    let body = problem(res, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(
        body["type"], "urn:strongroom:problem:integrity-error",
        "{body}"
    );

    // Cut at a chunk boundary: every remaining chunk is authentic, but the
    // object no longer ends with its last chunk.
    let target = &app.state.objects.targets()[0];
    let key = target.list_keys().await.unwrap().remove(0);
    let raw = target.raw_bytes(&key).await.unwrap();
    let cut = 8 + 2 * (256 * 1024 + 16);
    target.put_bytes(&key, raw.slice(..cut)).await.unwrap();
    let res = download(&app, &admin.access_token, &record, file_id).await;
    let body = problem(res, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(
        body["type"], "urn:strongroom:problem:integrity-error",
        "{body}"
    );
}

#[tokio::test]
async fn ctl_fil_5_a_damaged_primary_is_served_from_the_replica_and_repaired() {
    let replica = temp_dir("replica");
    let replica_url = format!("file://{}", replica.display());
    let app = spawn_app_with(|c| c.object_store_replica_url = Some(replica_url.clone())).await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let bytes = png_with("redundant", 300_000);
    let info = upload_ok(&app, &admin, &record, "photos", "a.png", &bytes).await;
    let file_id = info["id"].as_str().unwrap();
    let primary = app.objects(0).await;
    let copy = app.objects(1).await;
    assert_eq!(primary.len(), 1);
    assert_eq!(primary, copy, "the replica holds the same sealed object");

    // A flipped byte in the primary: served from the replica, then repaired.
    flip_byte(&app, 0, 1000).await;
    let res = download(&app, &admin.access_token, &record, file_id).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(app.objects(0).await, copy, "primary repaired");

    // A missing primary: the same.
    app.state.objects.targets()[0]
        .delete(&primary[0].0)
        .await
        .unwrap();
    let res = download(&app, &admin.access_token, &record, file_id).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.objects(0).await, copy);

    // The scrub finds a damaged copy, repairs it on request, then is clean.
    flip_byte(&app, 1, 5000).await;
    let out = app
        .cli()
        .await
        .args(["files", "verify"])
        .run()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("replica copy") && stdout.contains("damaged"),
        "{stdout}"
    );
    let out = app
        .cli()
        .await
        .args(["files", "verify", "--repair"])
        .run()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("repaired from the primary copy"));
    let out = app
        .cli()
        .await
        .args(["files", "verify", "--json"])
        .run()
        .await
        .unwrap();
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(
        out.stdout
            .trim_ascii_end()
            .rsplit(|b| *b == b'\n')
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["good"], 1, "{summary}");
    assert_eq!(app.objects(1).await, copy);

    // Both copies damaged: an integrity error, nothing served.
    flip_byte(&app, 0, 100).await;
    flip_byte(&app, 1, 100).await;
    let res = download(&app, &admin.access_token, &record, file_id).await;
    problem(res, StatusCode::INTERNAL_SERVER_ERROR).await;
    let _ = std::fs::remove_dir_all(replica);
}

#[tokio::test]
async fn ctl_net_5_stored_file_names_lose_bidirectional_controls() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let bytes = png_with("bidi", 100);
    // Shown as "invoiceexe.pdf" if the override were kept.
    let info = upload_ok(
        &app,
        &admin,
        &record,
        "photos",
        "invoice\u{202E}fdp.exe",
        &bytes,
    )
    .await;
    assert_eq!(info["name"], "invoicefdp.exe");
    let info = upload_ok(
        &app,
        &admin,
        &record,
        "photos",
        "\u{2067}a\u{2069}\u{200F}b\u{202A}c.png",
        &bytes,
    )
    .await;
    assert_eq!(info["name"], "abc.png");
}

#[tokio::test]
async fn ctl_fil_2_a_signed_link_ends_when_its_issuer_may_no_longer_read() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let info = upload_ok(&app, &admin, &record, "photos", "plan.png", PNG).await;
    let file_id = info["id"].as_str().unwrap().to_owned();
    let link_of = |session: Session| {
        let (app, record, file_id) = (&app, record.clone(), file_id.clone());
        async move {
            let res = app
                .get(
                    &format!("{}?signed=1&expires_in=300", files_path(&record, &file_id)),
                    &session.access_token,
                )
                .await;
            assert_eq!(res.status(), StatusCode::OK);
            let link: Value = res.json().await.unwrap();
            format!("{}{}", app.address, link["url"].as_str().unwrap())
        }
    };
    // Three members each issue a link, which works; then one is demoted to
    // auditor (no record reads), one disabled, one deleted.
    let changes = [
        ("demoted", json!({"role": "auditor"})),
        ("disabled", json!({"status": "disabled"})),
        ("deleted", Value::Null),
    ];
    for (what, patch) in changes {
        let member = app
            .user(&admin, &format!("{what}@acme.test"), "member")
            .await;
        let url = link_of(member.clone()).await;
        assert_eq!(
            app.client.get(&url).send().await.unwrap().status(),
            StatusCode::OK
        );
        let path = format!("/api/v1/users/{}", member.user_id);
        let res = match patch {
            Value::Null => app.delete(&path, &admin.access_token).await,
            patch => app.patch(&path, &admin.access_token, patch).await,
        };
        assert!(res.status().is_success(), "{what}: {}", res.status());
        let res = app.client.get(&url).send().await.unwrap();
        problem(res, StatusCode::FORBIDDEN).await;
    }
    // The admin's own link still works.
    let url = link_of(admin.clone()).await;
    assert_eq!(
        app.client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn ctl_acc_1_files_follow_their_collections_permission_and_a_keys_signed_links_end_with_it() {
    let app = spawn_app().await;
    let admin = app.admin("acme").await;
    let record = assets(&app, &admin).await;
    let bytes = png_with("pump drawing", 3_000);
    let info = upload_ok(&app, &admin, &record, "photos", "pump.png", &bytes).await;
    let path = files_path(&record, info["id"].as_str().unwrap());
    for (name, permissions) in [
        ("assets_reader", json!(["records.read:assets"])),
        ("other_reader", json!(["records.read:work_orders"])),
    ] {
        let res = app
            .post(
                "/api/v1/roles",
                Some(&admin.access_token),
                json!({"name": name, "permissions": permissions}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let key = |roles: Value| {
        let (app, admin) = (&app, &admin);
        async move {
            let res = app
                .post(
                    "/api/v1/api-keys",
                    Some(&admin.access_token),
                    json!({"name": "files", "roles": roles}),
                )
                .await;
            assert_eq!(res.status(), StatusCode::CREATED);
            let body: Value = res.json().await.unwrap();
            (
                body["id"].as_str().unwrap().to_owned(),
                body["secret"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (reader_id, reader) = key(json!(["assets_reader"])).await;
    let (_, other) = key(json!(["other_reader"])).await;
    // The collection's readers read its files; others do not, nor write.
    let res = app.get(&path, &reader).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());
    problem(app.get(&path, &other).await, StatusCode::FORBIDDEN).await;
    let upload = app
        .upload(
            &reader,
            &files_path(&record, "photos"),
            "x.png",
            "image/png",
            &bytes,
        )
        .await;
    problem(upload, StatusCode::FORBIDDEN).await;
    // A key's signed link works without a token, and ends with the key.
    let link: Value = app
        .get(&format!("{path}?signed=1&expires_in=60"), &reader)
        .await
        .json()
        .await
        .unwrap();
    let url = format!("{}{}", app.address, link["url"].as_str().unwrap());
    assert_eq!(
        app.client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    let res = app
        .delete(
            &format!("/api/v1/api-keys/{reader_id}"),
            &admin.access_token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let after = app.client.get(&url).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::FORBIDDEN);
}
