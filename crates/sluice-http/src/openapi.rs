//! `GET /api/openapi.json`: an OpenAPI 3.0 description of every route,
//! built from the same table the tests check against the router, so the
//! document cannot list a route that does not exist or miss one that does.
//! Request and response bodies are described in `docs/http.md`.

use axum::Json;
use serde_json::{Map, Value, json};

use crate::api::ROUTES;

pub(crate) async fn document() -> Json<Value> {
    let mut paths = Map::new();
    for (method, path, summary) in ROUTES {
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": {"type": if name == "partition" || name == "id" { "integer" } else { "string" }},
                })
            })
            .collect();
        let entry = paths
            .entry((*path).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(operations) = entry {
            operations.insert(
                (*method).to_owned(),
                json!({
                    "summary": summary,
                    "parameters": parameters,
                    "security": if path.starts_with("/api/health") { json!([]) } else { json!([{"basic": []}]) },
                    "responses": {
                        "200": {"description": "success (JSON)"},
                        "default": {
                            "description": "error",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                    },
                }),
            );
        }
    }
    Json(json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Sluice admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Topics, consumer groups, virtual hosts, exchanges, queues, bindings and connections of one Sluice node. Bodies are described in docs/http.md.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "name", "message"],
                            "properties": {
                                "code": {"type": "integer"},
                                "name": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    }))
}
