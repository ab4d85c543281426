//! Collection and record endpoints under `/api/v1/collections`.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{DEFAULT_PAGE, Field, ListQuery, MAX_PAGE, Precondition, Record, RecordError};
use crate::access::Permission;
use crate::context::RequestMeta;
use crate::http::api::{Api, Op};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::guard::Granted;
use crate::http::state::AppState;

pub fn router() -> Api {
    // What `validate_fields` accepts, as far as JSON Schema can say it
    // (names unique within the list cannot be said).
    let common = json!({
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$",
                 "not": {"enum": ["id", "collection", "version", "created_at", "updated_at"]}},
        "required": {"type": "boolean"},
        "personal": {"type": "boolean", "description": "personal data: stored encrypted"},
        "sensitive": {"type": "boolean", "description": "stored encrypted, redacted in the audit trail"},
    });
    let variant = |types: &[&str], extra: Value| {
        let mut properties = common.clone();
        properties["type"] = json!({"enum": types});
        if let (Some(p), Value::Object(extra)) = (properties.as_object_mut(), extra) {
            p.extend(extra);
        }
        json!({"type": "object", "required": ["name", "type"], "additionalProperties": false,
               "properties": properties})
    };
    // Encrypted values cannot be looked up: no unique or indexed then.
    let keyed = json!({"unique": {"type": "boolean"}, "indexed": {"type": "boolean"}});
    let not_encrypted_and_keyed = json!({"not": {"allOf": [
        {"anyOf": [{"required": ["sensitive"], "properties": {"sensitive": {"const": true}}},
                   {"required": ["personal"], "properties": {"personal": {"const": true}}}]},
        {"anyOf": [{"required": ["unique"], "properties": {"unique": {"const": true}}},
                   {"required": ["indexed"], "properties": {"indexed": {"const": true}}}]}
    ]}});
    let mut select_extra = keyed.clone();
    select_extra["options"] = json!({"type": "array", "minItems": 1, "maxItems": 500,
        "items": {"type": "string", "minLength": 1, "maxLength": 200}});
    let mut select = variant(&["select"], select_extra);
    select["required"] = json!(["name", "type", "options"]);
    let field_schema = json!({"oneOf": [
        {"allOf": [variant(&["text", "integer", "number", "boolean", "datetime", "email"], keyed.clone()),
                   not_encrypted_and_keyed.clone()]},
        {"allOf": [select, not_encrypted_and_keyed]},
        variant(&["json"], json!({"unique": {"const": false}, "indexed": {"const": false}})),
        variant(&["file"], json!({
            "required": {"const": false},
            "unique": {"const": false}, "indexed": {"const": false},
            "max_size": {"type": "integer", "minimum": 1, "maximum": super::schema::MAX_FILE_BYTES,
                         "description": "largest file in bytes (default 25 MiB)"},
            "max_files": {"type": "integer", "minimum": 1, "maximum": 100,
                          "description": "files per record (default 1)"},
            "accept": {"type": "array", "minItems": 1,
                       "items": {"enum": super::schema::KNOWN_TYPES},
                       "description": "allowed content types, sniffed from the bytes"}
        })),
    ]});
    let fields = json!({"type": "array", "maxItems": 200, "items": field_schema,
                        "description": "field names are unique within the list"});
    let collection_body = json!({
        "type": "object", "required": ["name", "fields"], "additionalProperties": false,
        "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"},
                       "fields": fields.clone()}
    });
    let fields_body = json!({
        "type": "object", "required": ["fields"], "additionalProperties": false,
        "properties": {"fields": fields}
    });
    let record_body = json!({"type": "object", "description": "the record's fields"});
    Api::new()
        .route(
            Op::new("GET", "/api/v1/collections", "List collections")
                .tag("collections")
                .permission(Permission::CollectionsRead, "collection.list"),
            get(list_collections),
        )
        .route(
            Op::new("POST", "/api/v1/collections", "Define a collection")
                .tag("collections")
                .permission(Permission::CollectionsManage, "collection.create")
                .errors(&[409])
                .body(collection_body)
                .ok(201),
            post(create_collection),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/collections/{name}",
                "Read a collection's schema",
            )
            .tag("collections")
            .permission(Permission::CollectionsRead, "collection.read"),
            get(get_collection),
        )
        .route(
            Op::new(
                "PATCH",
                "/api/v1/collections/{name}",
                "Replace a collection's fields",
            )
            .tag("collections")
            .permission(Permission::CollectionsManage, "collection.update")
            .errors(&[409])
            .body(fields_body),
            axum::routing::patch(update_collection),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/collections/{name}",
                "Delete a collection and its records",
            )
            .tag("collections")
            .permission(Permission::CollectionsManage, "collection.delete")
            .ok(204),
            axum::routing::delete(delete_collection),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/collections/{name}/records",
                "List records: filter[field]=value, sort=created_at|-created_at, limit, cursor",
            )
            .tag("records")
            .permission(Permission::RecordsRead, "record.list")
            .errors(&[410, 423])
            .param(
                "sort",
                json!({"enum": ["created_at", "-created_at"]}),
                false,
            )
            .param(
                "limit",
                json!({"type": "integer", "minimum": 1, "maximum": super::MAX_PAGE}),
                false,
            ),
            get(list_records),
        )
        .route(
            Op::new(
                "POST",
                "/api/v1/collections/{name}/records",
                "Create a record",
            )
            .tag("records")
            .permission(Permission::RecordsWrite, "record.create")
            .errors(&[409, 410, 423])
            .body(record_body.clone())
            .ok(201),
            post(create_record),
        )
        .route(
            Op::new(
                "GET",
                "/api/v1/collections/{name}/records/{id}",
                "Read a record (ETag)",
            )
            .tag("records")
            .permission(Permission::RecordsRead, "record.read")
            .errors(&[410, 423]),
            get(get_record),
        )
        .route(
            Op::new(
                "PATCH",
                "/api/v1/collections/{name}/records/{id}",
                "Update fields of a record (If-Match for optimistic concurrency; null removes)",
            )
            .tag("records")
            .permission(Permission::RecordsWrite, "record.update")
            .errors(&[409, 410, 412, 423])
            .body(record_body),
            axum::routing::patch(update_record),
        )
        .route(
            Op::new(
                "DELETE",
                "/api/v1/collections/{name}/records/{id}",
                "Delete a record",
            )
            .tag("records")
            .permission(Permission::RecordsWrite, "record.delete")
            .ok(204),
            axum::routing::delete(delete_record),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectionBody {
    name: String,
    fields: Vec<Field>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldsBody {
    fields: Vec<Field>,
}

async fn list_collections(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
) -> Result<impl IntoResponse, ApiError> {
    let items = super::list_collections(&state.store, &permit).await?;
    Ok(Json(json!({"items": items})))
}

async fn create_collection(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiJson(body): ApiJson<CollectionBody>,
) -> Result<impl IntoResponse, ApiError> {
    let collection =
        super::create_collection(&state.store, &permit, &meta, &body.name, body.fields).await?;
    Ok((StatusCode::CREATED, Json(collection)))
}

async fn get_collection(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    ApiPath(name): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        super::get_collection(&state.store, &permit, &name).await?,
    ))
}

async fn update_collection(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<FieldsBody>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        super::update_collection(&state.store, &permit, &meta, &name, body.fields).await?,
    ))
}

async fn delete_collection(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    super::delete_collection(&state.store, &permit, &meta, &name).await?;
    // The records' files went with them; their objects leave the stores now.
    state.files().sweep(permit.scope()).await;
    Ok(StatusCode::NO_CONTENT)
}

fn record_response(status: StatusCode, record: &Record) -> Response {
    let mut response = (status, Json(record.to_json())).into_response();
    if let Ok(etag) = HeaderValue::from_str(&record.etag()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(Precondition::None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match must be ASCII"))?;
    Ok(Precondition::IfMatch(
        text.split(',').map(|t| t.trim().to_owned()).collect(),
    ))
}

fn parse_list_query(raw: Option<&str>) -> Result<ListQuery, RecordError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| RecordError::InvalidQuery("malformed query string".into()))?;
    let mut query = ListQuery {
        descending: true,
        limit: DEFAULT_PAGE,
        ..ListQuery::default()
    };
    for (key, value) in pairs {
        if let Some(field) = key
            .strip_prefix("filter[")
            .and_then(|k| k.strip_suffix(']'))
        {
            if query.filters.len() == super::MAX_FILTERS {
                return Err(RecordError::TooManyFilters);
            }
            query.filters.push((field.to_owned(), value));
            continue;
        }
        match key.as_str() {
            "sort" => {
                query.descending = match value.as_str() {
                    "created_at" => false,
                    "-created_at" => true,
                    _ => {
                        return Err(RecordError::InvalidQuery(
                            "sort must be created_at or -created_at".into(),
                        ));
                    }
                }
            }
            "limit" => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        RecordError::InvalidQuery(format!("limit must be 1-{MAX_PAGE}"))
                    })?;
            }
            "cursor" => query.cursor = Some(value),
            other => {
                return Err(RecordError::InvalidQuery(format!(
                    "unknown parameter {other:?}; use filter[field], sort, limit, cursor"
                )));
            }
        }
    }
    Ok(query)
}

async fn list_records(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    ApiPath(name): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let query = parse_list_query(raw.as_deref())?;
    let page = super::list_records(&state.store, &state.vault, &permit, &name, query).await?;
    let items: Vec<Value> = page.items.iter().map(Record::to_json).collect();
    Ok(Json(
        json!({"items": items, "next_cursor": page.next_cursor}),
    ))
}

async fn create_record(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let record =
        super::create_record(&state.store, &state.vault, &permit, &meta, &name, body).await?;
    Ok(record_response(StatusCode::CREATED, &record))
}

async fn get_record(
    State(state): State<AppState>,
    Granted(_, permit): Granted,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let record = super::get_record(&state.store, &state.vault, &permit, &name, &id).await?;
    Ok(record_response(StatusCode::OK, &record))
}

async fn update_record(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    headers: HeaderMap,
    ApiPath((name, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let precondition = precondition(&headers)?;
    let record = super::update_record(
        &state.store,
        &state.vault,
        &permit,
        &meta,
        (&name, &id),
        body,
        precondition,
    )
    .await?;
    Ok(record_response(StatusCode::OK, &record))
}

async fn delete_record(
    State(state): State<AppState>,
    meta: RequestMeta,
    Granted(_, permit): Granted,
    headers: HeaderMap,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let precondition = precondition(&headers)?;
    super::delete_record(&state.store, &permit, &meta, &name, &id, precondition).await?;
    state.files().sweep(permit.scope()).await;
    Ok(StatusCode::NO_CONTENT)
}
