//! Routes and their OpenAPI 3.1 description come from the same call:
//! [`Api::route`] adds the handler to the router and the operation to the
//! document, so `/openapi.json` covers every route by construction.

use std::collections::BTreeMap;

use axum::Router;
use axum::routing::MethodRouter;
use serde_json::{Map, Value, json};

use super::state::AppState;
use crate::access::Permission;

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
}

#[derive(Clone, Copy)]
pub enum Auth {
    Public,
    Bearer,
    Permission(Permission),
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
        }
    }

    pub fn tag(mut self, tag: &'static str) -> Op {
        self.tag = tag;
        self
    }

    pub fn bearer(mut self) -> Op {
        self.auth = Auth::Bearer;
        self
    }

    pub fn permission(mut self, permission: Permission) -> Op {
        self.auth = Auth::Permission(permission);
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

/// A router fragment with its documentation.
pub struct Api {
    router: Router<AppState>,
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
            router: Router::new(),
            paths: BTreeMap::new(),
        }
    }

    pub fn route(mut self, op: Op, handler: MethodRouter<AppState>) -> Api {
        self.router = self.router.route(op.path, handler);
        let entry = self.paths.entry(op.path).or_default();
        entry.insert(op.method.to_lowercase(), describe(&op));
        self
    }

    pub fn merge(mut self, other: Api) -> Api {
        self.router = self.router.merge(other.router);
        for (path, ops) in other.paths {
            self.paths.entry(path).or_default().extend(ops);
        }
        self
    }

    pub fn into_parts(self) -> (Router<AppState>, Value) {
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
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA, 60 s)"}
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
        (self.router, doc)
    }
}

fn describe(op: &Op) -> Value {
    let params: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let problem = json!({"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let mut responses = Map::new();
    let mut ok = json!({"description": "success"});
    if op.ok != 204 {
        ok["content"] = json!({"application/json": {"schema": {"type": "object"}}});
    }
    responses.insert(op.ok.to_string(), ok);
    let mut errors = vec![("400", "malformed request"), ("422", "invalid input")];
    if !matches!(op.auth, Auth::Public) {
        errors.push(("401", "missing, invalid or expired token"));
    }
    if matches!(op.auth, Auth::Permission(_)) {
        errors.push(("403", "permission denied (recorded in the audit trail)"));
    }
    if op.path.contains('{') {
        errors.push(("404", "not found in your tenant"));
    }
    for (status, description) in errors {
        let mut response = problem.clone();
        response["description"] = json!(description);
        responses.insert(status.to_owned(), response);
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
        Auth::Bearer => operation["security"] = json!([{"bearer": []}]),
        Auth::Permission(p) => {
            operation["security"] = json!([{"bearer": []}]);
            operation["x-permission"] = json!(p.name());
        }
    }
    if let Some(schema) = &op.body {
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}}
        });
    }
    operation
}
