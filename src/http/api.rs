//! Routes and their OpenAPI 3.1 description come from the same call:
//! [`Api::route`] adds the handler to the router and the operation to the
//! document, so `/openapi.json` covers every route by construction. What
//! an operation declares it needs is also what the router checks (ACC-1,
//! ACC-3): a tenant permission (`x-permission`, [`super::guard::guard`])
//! or operator roles (`x-operator-roles`, [`super::guard::operator_guard`]).

use std::collections::BTreeMap;

use axum::Router;
use axum::routing::MethodRouter;
use serde_json::{Map, Value, json};

use super::guard::Declared;
use super::state::AppState;
use crate::access::Permission;
use crate::operators::OperatorRole;

/// One documented operation.
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    /// `None` for public operations; otherwise a bearer token is needed.
    pub auth: Auth,
    /// A JSON Schema for the request body.
    pub body: Option<Value>,
    /// The success status.
    pub ok: u16,
    /// Statuses this operation answers beyond the ones every operation of
    /// its kind can (see [`describe`]).
    pub errors: &'static [u16],
    /// Query parameters, as OpenAPI parameter objects.
    pub query: Vec<Value>,
    /// The success body's content types (JSON when empty).
    pub produces: &'static [&'static str],
    /// The request body is `multipart/form-data` with this schema.
    pub multipart: Option<Value>,
}

#[derive(Clone, Copy)]
pub enum Auth {
    Public,
    /// A signed-in user acting on their own account: no permission.
    Bearer,
    /// The permission the operation needs, and the audit action a denial
    /// is recorded as. The router checks it before the handler runs and
    /// hands the handler its [`super::guard::Granted`] permit.
    Permission(Permission, &'static str),
    /// An operator's session (ACC-3) with a confirmed second factor, in
    /// one of these roles; the router checks it before the handler runs.
    Operator(&'static [OperatorRole]),
}

impl Op {
    pub const fn new(method: &'static str, path: &'static str, summary: &'static str) -> Op {
        Op {
            method,
            path,
            summary,
            tag: "system",
            auth: Auth::Public,
            body: None,
            ok: 200,
            errors: &[],
            query: Vec::new(),
            produces: &[],
            multipart: None,
        }
    }

    pub fn errors(mut self, statuses: &'static [u16]) -> Op {
        self.errors = statuses;
        self
    }

    /// A query parameter: its name, schema, and whether it is required.
    pub fn param(mut self, name: &str, schema: Value, required: bool) -> Op {
        self.query
            .push(json!({"name": name, "in": "query", "required": required, "schema": schema}));
        self
    }

    pub fn produces(mut self, types: &'static [&'static str]) -> Op {
        self.produces = types;
        self
    }

    pub fn multipart(mut self, schema: Value) -> Op {
        self.multipart = Some(schema);
        self
    }

    pub fn tag(mut self, tag: &'static str) -> Op {
        self.tag = tag;
        self
    }

    pub fn bearer(mut self) -> Op {
        self.auth = Auth::Bearer;
        self
    }

    /// The operator roles that may call the operation.
    pub fn operator(mut self, roles: &'static [OperatorRole]) -> Op {
        self.auth = Auth::Operator(roles);
        self
    }

    /// The permission the operation needs; a denial is recorded in the
    /// trail as `action` with outcome `denied`.
    pub fn permission(mut self, permission: Permission, action: &'static str) -> Op {
        self.auth = Auth::Permission(permission, action);
        self
    }

    pub fn body(mut self, schema: Value) -> Op {
        self.body = Some(schema);
        self
    }

    pub fn ok(mut self, status: u16) -> Op {
        self.ok = status;
        self
    }
}

/// The check the router puts in front of a route.
enum Guarded {
    Not,
    Tenant(Declared),
    Operator(&'static [OperatorRole]),
}

/// A router fragment with its documentation.
pub struct Api {
    routes: Vec<(&'static str, MethodRouter<AppState>, Guarded)>,
    paths: BTreeMap<&'static str, Map<String, Value>>,
}

impl Default for Api {
    fn default() -> Self {
        Api::new()
    }
}

impl Api {
    pub fn new() -> Api {
        Api {
            routes: Vec::new(),
            paths: BTreeMap::new(),
        }
    }

    pub fn route(mut self, op: Op, handler: MethodRouter<AppState>) -> Api {
        let declared = match op.auth {
            Auth::Operator(roles) => Guarded::Operator(roles),
            Auth::Permission(permission, action) => Guarded::Tenant(Declared {
                permission,
                action,
                // The records (and their files) of the collection the
                // path names: a per-collection permission reaches them.
                per_collection: op.path.starts_with("/api/v1/collections/{name}/records")
                    && matches!(
                        permission,
                        Permission::RecordsRead | Permission::RecordsWrite
                    ),
                files: op.path.contains("/files/"),
            }),
            _ => Guarded::Not,
        };
        self.routes.push((op.path, handler, declared));
        let entry = self.paths.entry(op.path).or_default();
        entry.insert(op.method.to_lowercase(), describe(&op));
        self
    }

    pub fn merge(mut self, other: Api) -> Api {
        self.routes.extend(other.routes);
        for (path, ops) in other.paths {
            self.paths.entry(path).or_default().extend(ops);
        }
        self
    }

    /// The router, each route behind the check of the permission it
    /// declares, and the OpenAPI document.
    pub fn into_parts(self, state: &AppState) -> (Router<AppState>, Value) {
        let mut router = Router::new();
        for (path, handler, declared) in self.routes {
            let handler = match declared {
                Guarded::Tenant(declared) => {
                    handler.route_layer(axum::middleware::from_fn_with_state(
                        (state.clone(), declared),
                        super::guard::guard,
                    ))
                }
                Guarded::Operator(roles) => {
                    handler.route_layer(axum::middleware::from_fn_with_state(
                        (state.clone(), roles),
                        super::guard::operator_guard,
                    ))
                }
                Guarded::Not => handler,
            };
            router = router.route(path, handler);
        }
        let paths: Map<String, Value> = self
            .paths
            .into_iter()
            .map(|(path, ops)| (path.to_owned(), Value::Object(ops)))
            .collect();
        let doc = json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Strongroom API",
                "version": crate::VERSION,
                "description": "Multi-tenant backend whose security controls are enforced in code. \
                                Errors are RFC 9457 application/problem+json.",
            },
            "paths": paths,
            "components": {
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA, 60 s)"},
                    "api_key": {"type": "http", "scheme": "bearer", "bearerFormat": "sr_key_…",
                                "description": "a tenant's API key (POST /api/v1/api-keys); it acts \
                                                with its roles on operations that declare a permission"},
                    "operator": {"type": "http", "scheme": "bearer", "bearerFormat": "sr_ops_…",
                                 "description": "an operator's session (POST /api/v1/ops/auth/login), \
                                                 its second factor confirmed"},
                    "session_cookie": {"type": "apiKey", "in": "cookie", "name": "__Host-sr_session",
                                       "description": "a browser session (login with mode cookie); \
                                                       unsafe methods also need X-CSRF-Token"}
                },
                "schemas": {
                    "Problem": {
                        "type": "object",
                        "required": ["type", "title", "status", "detail"],
                        "properties": {
                            "type": {"type": "string"}, "title": {"type": "string"},
                            "status": {"type": "integer"}, "detail": {"type": "string"},
                            "request_id": {"type": "string"}, "field": {"type": "string"}
                        }
                    }
                }
            }
        });
        (router, doc)
    }
}

/// The pattern of text the API takes: anything but NUL (U+0000), which no
/// stored text may hold (PostgreSQL refuses it, and so does the server).
const NO_NUL: &str = "^[^\\u0000]*$";

/// Gives every free-text string of `schema` the [`NO_NUL`] pattern (one
/// already constrained by a pattern, enum, format or alternatives keeps
/// its own, which admit no NUL either).
fn without_nul(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let constrained = ["pattern", "enum", "const", "format", "anyOf", "oneOf"]
                .iter()
                .any(|k| map.contains_key(*k));
            if map.get("type").and_then(Value::as_str) == Some("string") && !constrained {
                map.insert("pattern".into(), json!(NO_NUL));
            }
            map.values_mut().for_each(without_nul);
        }
        Value::Array(items) => items.iter_mut().for_each(without_nul),
        _ => {}
    }
}

/// What each status means when an operation documents it.
fn meaning(status: u16) -> &'static str {
    match status {
        400 => "malformed request (syntax, unknown query parameter)",
        401 => "missing, invalid or expired token or credentials",
        403 => {
            "refused: permission denied (recorded in the audit trail), an address outside \
                the tenant's allow-list, or a banned address"
        }
        404 => "not found in your tenant",
        409 => "conflicts with the current state",
        412 => "If-Match does not match the current version",
        413 => "the body is larger than allowed",
        415 => "the body is not of the media type the operation takes",
        422 => "invalid input",
        423 => "the tenant's data is locked (its key was revoked or destroyed)",
        429 => "too many requests: wait for Retry-After",
        503 => "not ready",
        _ => "error",
    }
}

fn describe(op: &Op) -> Value {
    let mut params: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(op.query.iter().cloned());
    params.iter_mut().for_each(without_nul);
    let problem = json!({"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let mut responses = Map::new();
    let mut ok = json!({"description": "success"});
    if op.ok != 204 {
        let types: &[&str] = match op.produces {
            [] => &["application/json"],
            types => types,
        };
        let content: Map<String, Value> = types
            .iter()
            .map(|t| {
                let schema = match *t {
                    "application/json" => json!({"type": "object"}),
                    _ => json!({"type": "string"}),
                };
                ((*t).to_owned(), json!({"schema": schema}))
            })
            .collect();
        ok["content"] = Value::Object(content);
    }
    responses.insert(op.ok.to_string(), ok);
    // Every operation: malformed or invalid input, and a banned address.
    let mut errors = vec![400, 403, 422];
    if op.body.is_some() || op.multipart.is_some() {
        errors.extend([413, 415]);
    }
    if !matches!(op.auth, Auth::Public) {
        // Authenticated requests are rate limited per user, address, tenant.
        errors.extend([401, 429]);
    }
    if op.path.contains('{') {
        errors.push(404);
    }
    errors.extend(op.errors.iter().copied());
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        let mut response = problem.clone();
        response["description"] = json!(meaning(status));
        responses.insert(status.to_string(), response);
    }
    let mut operation = json!({
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": format!("{}{}", op.method.to_lowercase(), op.path.replace(['/', '{', '}', '-'], "_")),
        "parameters": params,
        "responses": responses,
    });
    match op.auth {
        Auth::Public => {}
        Auth::Bearer => operation["security"] = json!([{"bearer": []}, {"session_cookie": []}]),
        Auth::Operator(roles) => {
            operation["security"] = json!([{"operator": []}]);
            operation["x-operator-roles"] =
                json!(roles.iter().map(|r| r.as_str()).collect::<Vec<_>>());
        }
        Auth::Permission(p, _) => {
            operation["security"] =
                json!([{"bearer": []}, {"session_cookie": []}, {"api_key": []}]);
            operation["x-permission"] = json!(p.name());
        }
    }
    if let Some(schema) = &op.body {
        let mut schema = schema.clone();
        without_nul(&mut schema);
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}}
        });
    }
    if let Some(schema) = &op.multipart {
        let mut schema = schema.clone();
        without_nul(&mut schema);
        operation["requestBody"] = json!({
            "required": true,
            "content": {"multipart/form-data": {"schema": schema}}
        });
    }
    operation
}
