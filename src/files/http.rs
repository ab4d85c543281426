//! File endpoints: upload (multipart, streamed), download (verified and
//! streamed, or a signed link), delete, and the signed-link download.

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;

use super::signed::{self, DEFAULT_TTL_SECONDS, Grant, MAX_TTL_SECONDS};
use super::{FileError, Files, OpenFile, Slot, clean_name};
use crate::access::Permission;
use crate::context::Permit;
use crate::context::RequestMeta;
use crate::context::{TenantId, TenantScope};
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiPath, Who};
use crate::http::guard::Granted;
use crate::http::state::AppState;
use crate::store::StoreError;

const FILE_PATH: &str = "/api/v1/collections/{name}/records/{id}/files/{file}";

pub fn router() -> Api {
    Api::new()
        .route(
            Op::new(
                "POST",
                FILE_PATH,
                "Upload a file into the file field named {file} (multipart/form-data, one part named \"file\"); streamed and encrypted",
            )
            .tag("files")
            .permission(Permission::RecordsWrite, "file.upload")
            .errors(&[409, 410, 423])
            .multipart(json!({"type": "object", "required": ["file"], "additionalProperties": false,
                              "properties": {"file": {"type": "string", "format": "binary"}}}))
            .ok(201),
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            Op::new(
                "GET",
                FILE_PATH,
                "Download the file with id {file} as an attachment; ?signed=1&expires_in=60 returns a link that works without a token (at most 300 s)",
            )
            .tag("files")
            .permission(Permission::RecordsRead, "file.download")
            .errors(&[410, 423])
            .param("signed", json!({"enum": ["1", "true", "0", "false"]}), false)
            .param("expires_in", json!({"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS}), false)
            .produces(&["*/*"]),
            get(download),
        )
        .route(
            Op::new("DELETE", FILE_PATH, "Delete the file with id {file}")
                .tag("files")
                .permission(Permission::RecordsWrite, "file.delete")
                .errors(&[410, 423])
                .ok(204),
            delete(remove),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/files/{file}",
                "Download through a signed link (tenant, by, expires, signature); 403 once expired or altered",
            )
            .tag("files")
            .errors(&[404, 410, 423])
            .param("tenant", json!({"type": "string"}), true)
            .param("by", json!({"type": "string"}), true)
            .param("expires", json!({"type": "integer"}), true)
            .param("signature", json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}), true)
            .produces(&["*/*"]),
            get(signed_download),
        )
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        use FileError::*;
        match e {
            NotFound => ApiError::not_found(e.to_string()),
            NotAFileField(ref field) => {
                let field = field.clone();
                ApiError::validation(e.to_string()).with_field(field)
            }
            TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", e.to_string())
            }
            TypeNotAccepted { .. } => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "type-not-accepted",
                e.to_string(),
            ),
            TooManyFiles { .. } => {
                ApiError::new(StatusCode::CONFLICT, "too-many-files", e.to_string())
            }
            BadUpload(_) => ApiError::bad_request(e.to_string()),
            BadSignature => ApiError::new(StatusCode::FORBIDDEN, "bad-signature", e.to_string()),
            Objects(ref inner) => {
                tracing::error!(error = %inner, "object store failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "object-store-unavailable",
                    "the object store did not answer; retry later",
                )
            }
            Crypto(e) => e.into(),
            Record(e) => e.into(),
            Access(e) => e.into(),
            Store(e) => e.into(),
            Internal(ref why) => ApiError::internal(why),
        }
    }
}

async fn upload(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath((name, id, field)): ApiPath<(String, String, String)>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad-request",
            format!("send multipart/form-data with one part named \"file\": {e}"),
        )
    })?;
    // One part, named "file": anything else is refused, not skipped.
    let part = match multipart.next_field().await {
        Ok(Some(part)) if part.name() == Some("file") => part,
        Ok(Some(part)) => {
            return Err(ApiError::validation(format!(
                "unexpected part {:?}: send one part, named \"file\"",
                part.name().unwrap_or("")
            )));
        }
        Ok(None) => {
            return Err(ApiError::bad_request(
                "the multipart body has no part named \"file\"",
            ));
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "malformed multipart body: {e}"
            )));
        }
    };
    let file_name = clean_name(part.file_name());
    let info = state
        .files()
        .upload(
            &permit,
            &meta,
            Slot {
                collection: &name,
                record_id: &id,
                field: &field,
            },
            file_name,
            part,
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

/// Records a read of a file in the audit trail (FIL-3).
async fn audit_read(
    state: &AppState,
    permit: &Permit,
    meta: &RequestMeta,
    action: &'static str,
    file_id: &str,
) -> Result<(), ApiError> {
    let file_id = file_id.to_owned();
    state
        .store
        .write(permit, meta, action, move |tx| {
            Box::pin(async move {
                tx.set_target("file", file_id);
                Ok::<_, StoreError>(())
            })
        })
        .await?;
    Ok(())
}

async fn download(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath((name, id, file_id)): ApiPath<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut signed = false;
    let mut ttl = DEFAULT_TTL_SECONDS;
    for (key, value) in
        serde_urlencoded::from_str::<Vec<(String, String)>>(query.as_deref().unwrap_or(""))
            .map_err(|_| ApiError::bad_request("malformed query string"))?
    {
        match key.as_str() {
            "signed" => signed = matches!(value.as_str(), "1" | "true"),
            "expires_in" => {
                ttl = value
                    .parse()
                    .ok()
                    .filter(|t| (1..=MAX_TTL_SECONDS).contains(t))
                    .ok_or_else(|| {
                        ApiError::validation("expires_in must be 1-300 seconds")
                            .with_field("expires_in")
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; use signed and expires_in"
                )));
            }
        }
    }
    let files = state.files();
    let file = files.open(permit.scope(), &name, &id, &file_id).await?;
    if signed {
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() + ttl;
        let grant = Grant {
            tenant: permit.scope().id_str().to_owned(),
            file: file.info.id.clone(),
            by: permit.actor().id.clone().unwrap_or_default(),
            expires,
        };
        audit_read(&state, &permit, &meta, "file.link", &file.info.id).await?;
        let expires_at = time::OffsetDateTime::from_unix_timestamp(expires)
            .map(crate::clock::format)
            .unwrap_or_default();
        return Ok(axum::Json(json!({
            "url": signed::link(state.keyring.url_signing_key(), &grant),
            "expires_in": ttl,
            "expires_at": expires_at,
        }))
        .into_response());
    }
    serve(&state, &files, &permit, &meta, "file.download", file).await
}

async fn signed_download(
    State(state): State<AppState>,
    meta: RequestMeta,
    who: Who,
    ApiPath(file_id): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut tenant = None;
    let mut by = None;
    let mut expires = None;
    let mut signature = None;
    for (key, value) in
        serde_urlencoded::from_str::<Vec<(String, String)>>(query.as_deref().unwrap_or(""))
            .map_err(|_| ApiError::from(FileError::BadSignature))?
    {
        match key.as_str() {
            "tenant" => tenant = Some(value),
            "by" => by = Some(value),
            "expires" => expires = value.parse::<i64>().ok(),
            "signature" => signature = Some(value),
            _ => return Err(FileError::BadSignature.into()),
        }
    }
    let (Some(tenant), Some(by), Some(expires), Some(signature)) = (tenant, by, expires, signature)
    else {
        return Err(FileError::BadSignature.into());
    };
    let grant = Grant {
        tenant,
        file: file_id,
        by,
        expires,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    signed::check(state.keyring.url_signing_key(), &grant, &signature, now)?;
    let tenant_id = TenantId::parse(&grant.tenant).ok_or(FileError::BadSignature)?;
    who.set(&grant.tenant, &grant.by, None);
    let scope = TenantScope::trusted(tenant_id);
    // The link is its issuer's read: it ends when they may no longer read.
    let files = state.files();
    let collection = files.collection_of(&scope, &grant.file).await?;
    if !crate::identity::may_still_read(&state.store, &scope, &grant.by, &collection).await? {
        return Err(FileError::BadSignature.into());
    }
    let file = files.open_by_id(&scope, &grant.file).await?;
    let permit = Permit::signed_link(scope, grant.by.clone());
    serve(&state, &files, &permit, &meta, "file.download_signed", file).await
}

/// Verifies a copy, audits the read, then streams the plaintext.
async fn serve(
    state: &AppState,
    files: &Files,
    permit: &Permit,
    meta: &RequestMeta,
    action: &'static str,
    file: OpenFile,
) -> Result<Response, ApiError> {
    let copy = files.good_copy(&file).await?;
    audit_read(state, permit, meta, action, &file.info.id).await?;
    let body = match copy.kept {
        Some(plaintext) => Body::from_stream(futures_util::stream::iter(
            plaintext.into_iter().map(Ok::<_, std::io::Error>),
        )),
        None => Body::from_stream(files.plaintext(&file, copy.store).await?),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    let content_type = HeaderValue::from_str(&file.info.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.info.size));
    if let Ok(value) = HeaderValue::from_str(&content_disposition(&file.info.name)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", file.info.sha256)) {
        headers.insert(header::ETAG, etag);
    }
    Ok(response)
}

/// `attachment` with an ASCII fallback name and the exact UTF-8 name
/// (RFC 6266 / RFC 8187).
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath((name, id, file_id)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    state
        .files()
        .delete(&permit, &meta, &name, &id, &file_id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_are_quoted_safely() {
        assert_eq!(
            content_disposition("report \"q1\".pdf"),
            "attachment; filename=\"report _q1_.pdf\"; filename*=UTF-8''report%20%22q1%22.pdf"
        );
        assert!(content_disposition("račun.pdf").contains("ra%C4%8Dun.pdf"));
    }
}
