//! The JSON Schema of the config file, for editors (`fulcrum schema`).
//! Hand-written from the raw structs, so descriptions can say what the
//! validator will say; a test probes every raw struct's accepted keys
//! through serde and fails when the schema and the parser disagree.

use serde_json::{Value, json};

fn duration(desc: &str) -> Value {
    json!({ "type": "string", "description": format!("{desc} A duration such as \"500ms\", \"2s\" or \"1m\"."), "pattern": "^\\s*[0-9]" })
}

fn object(desc: &str, props: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "description": desc,
        "additionalProperties": false,
        "properties": props,
        "required": required,
    })
}

/// The schema, draft 2020-12.
pub fn config_schema() -> Value {
    let header = object(
        "A header condition: present, equal to `value`, or matching `regex`.",
        json!({
            "name": { "type": "string" },
            "value": { "type": "string" },
            "regex": { "type": "string" }
        }),
        &["name"],
    );
    let matcher = object(
        "Conditions that must all hold; an absent one matches anything.",
        json!({
            "host": { "type": "string", "description": "Exact host, or `*.example.com`." },
            "path": { "type": "string", "description": "Exact path." },
            "path_prefix": { "type": "string" },
            "path_regex": { "type": "string", "description": "Anchored at both ends." },
            "methods": { "type": "array", "items": { "type": "string" } },
            "headers": { "type": "array", "items": header }
        }),
        &[],
    );
    let backend = object(
        "One backend server.",
        json!({
            "addr": { "type": "string", "description": "IP:port." },
            "weight": { "type": "integer", "minimum": 0, "maximum": 1000, "default": 1 }
        }),
        &["addr"],
    );
    let pool = object(
        "A pool of backends and how to balance over them.",
        json!({
            "algorithm": { "enum": ["round_robin", "least_request", "random", "hash", "first"], "default": "round_robin" },
            "protocol": { "enum": ["http1", "h2"], "default": "http1", "description": "What Fulcrum speaks to the backends." },
            "hash": object("The hash key, for `algorithm = \"hash\"`.", json!({
                "key": { "type": "string", "description": "`header:NAME`, `cookie:NAME`, `client_ip` or `path`." },
                "on_missing": { "enum": ["hash_empty", "random"] }
            }), &["key"]),
            "backends": { "type": "array", "items": backend },
            "health": object("Active health check.", json!({
                "path": { "type": "string" },
                "interval": duration("Between checks."),
                "timeout": duration("Per check."),
                "healthy_threshold": { "type": "integer", "minimum": 1 },
                "unhealthy_threshold": { "type": "integer", "minimum": 1 },
                "expect_status": { "type": "string", "description": "`200` or `200-399`." }
            }), &["path"]),
            "outlier": object("Passive outlier ejection.", json!({
                "consecutive_failures": { "type": "integer", "minimum": 1 },
                "base_ejection": duration("First ejection."),
                "max_ejection": duration("Longest ejection."),
                "max_ejected_fraction": { "type": "number", "minimum": 0, "maximum": 1 },
                "enabled": { "type": "boolean" }
            }), &[]),
            "panic_threshold": { "type": "number", "minimum": 0, "maximum": 1 },
            "idle_per_backend": { "type": "integer", "minimum": 0, "maximum": 100000 },
            "timeouts": object("Timeouts towards the backends.", json!({
                "connect": duration("TCP connect."),
                "response": duration("Request sent to response head."),
                "idle": duration("Unused keep-alive connection."),
                "tunnel": duration("Idle WebSocket tunnel.")
            }), &[]),
            "retries": object("Retries, bounded by a budget.", json!({
                "attempts": { "type": "integer", "minimum": 0, "maximum": 10 },
                "budget": { "type": "number", "minimum": 0, "maximum": 1 },
                "min_concurrent": { "type": "integer", "minimum": 0 }
            }), &[])
        }),
        &["backends"],
    );
    let certificate = object(
        "A certificate chain and its private key, PEM files relative to the config.",
        json!({ "cert": { "type": "string" }, "key": { "type": "string" } }),
        &["cert", "key"],
    );
    let tls = object(
        "Terminate TLS: one certificate (`cert`, `key`) or several chosen by SNI.",
        json!({
            "cert": { "type": "string" },
            "key": { "type": "string" },
            "certificates": { "type": "array", "items": certificate },
            "min_version": { "enum": ["1.2", "1.3"] }
        }),
        &[],
    );
    let listener = object(
        "Where clients connect.",
        json!({
            "name": { "type": "string" },
            "bind": { "type": "string" },
            "header_timeout": duration("For a complete request head."),
            "idle_timeout": duration("Between keep-alive requests."),
            "body_timeout": duration("Between two reads of a request body."),
            "min_body_rate": { "type": "integer", "minimum": 0, "maximum": 1073741824, "description": "Bytes per second a request body must average after body_timeout; 0: no minimum." },
            "send_timeout": duration("Longest a client may take no bytes of its response."),
            "limits": object("Request and connection limits.", json!({
                "max_header_bytes": { "type": "integer", "minimum": 1 },
                "max_headers": { "type": "integer", "minimum": 1 },
                "max_uri_bytes": { "type": "integer", "minimum": 1 },
                "max_body_bytes": { "type": "integer", "minimum": 0 },
                "max_connections": { "type": "integer", "minimum": 1 }
            }), &[]),
            "http2": object("HTTP/2 from clients.", json!({
                "enabled": { "type": "boolean" },
                "only": { "type": "boolean", "description": "HTTP/2 alone: h2c by prior knowledge, or h2 by ALPN." },
                "max_concurrent_streams": { "type": "integer", "minimum": 1 },
                "max_pending_reset_streams": { "type": "integer", "minimum": 1 },
                "max_local_error_reset_streams": { "type": "integer", "minimum": 1 },
                "keep_alive_interval": duration("Between PINGs to an idle client."),
                "keep_alive_timeout": duration("For a PING's answer.")
            }), &[]),
            "tls": tls.clone()
        }),
        &["name", "bind"],
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Fulcrum config",
        "description": "See docs/config.md for every key.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "version": { "type": "string", "description": "A label for this config; default: a hash of the file." },
            "tests": { "type": "array", "items": { "type": "string" }, "description": "Rule files this config ships with, relative to it; every change must pass them." },
            "admin": object("The admin API, dashboard and /metrics.", json!({
                "listen": { "type": "string" },
                "token_file": { "type": "string", "description": "The file holding the bearer token." },
                "tls": tls
            }), &["listen"]),
            "guard": object("Detectors over live traffic that judge the last change and roll it back during its canary or probation. See docs/guard.md.", json!({
                "enabled": { "type": "boolean" },
                "rollback": { "type": "boolean" },
                "window": duration("The sliding window rates and shares are judged over."),
                "probation": duration("After promotion, how long a change is still rolled back on a failing verdict."),
                "attribution": duration("An alert within this long of a change names it."),
                "min_requests": { "type": "integer", "minimum": 5 },
                "confidence": { "type": "number", "exclusiveMinimum": 0.5, "exclusiveMaximum": 1 },
                "min_effect": { "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1 },
                "latency_ratio": { "type": "number", "exclusiveMinimum": 1 },
                "max_backend_share": { "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1 },
                "min_healthy_fraction": { "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1 },
                "consecutive": { "type": "integer", "minimum": 1, "maximum": 100 },
                "webhook": { "type": "string", "description": "An http:// URL alerts are POSTed to as JSON." }
            }), &[]),
            "access_log": object("One JSON line per request.", json!({
                "path": { "type": "string", "description": "`stdout` or a file path." },
                "redact": { "type": "array", "items": { "type": "string" }, "description": "Headers logged only as a keyed hash." },
                "headers": { "type": "array", "items": { "type": "string" }, "description": "Headers recorded on every line besides those the config reads, so a later config that reads them can be replayed." },
                "cookies": { "type": "array", "items": { "type": "string" }, "description": "Cookies recorded (redacted) on every line besides those the config hashes on." }
            }), &["path"]),
            "listener": { "type": "array", "items": listener },
            "route": { "type": "array", "items": object("The first route that matches wins.", json!({
                "name": { "type": "string" },
                "match": matcher,
                "pool": { "type": "string" },
                "guard": object("The route's outcome signal.", json!({
                    "failure_statuses": { "type": "array", "items": { "type": "string" }, "description": "Statuses (\"401\") and classes (\"5xx\") that mean the route failed its users; default every 4xx and 5xx." }
                }), &[])
            }), &["name", "pool"]) },
            "pool": { "type": "object", "additionalProperties": pool }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::*;
    use serde::de::DeserializeOwned;

    /// The keys serde accepts for `T`, from its `deny_unknown_fields` error.
    fn keys<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let err = toml::from_str::<T>("zz_probe = 1").unwrap_err().to_string();
        let mut names: Vec<String> = err
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        names.remove(0);
        names.sort();
        names
    }

    fn props(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    }

    #[test]
    fn schema_covers_every_key_the_parser_accepts() {
        let s = config_schema();
        let p = &s["properties"];
        let pool = &p["pool"]["additionalProperties"];
        let route = &p["route"]["items"];
        for (got, want) in [
            (props(&s), {
                let mut t: Vec<String> = TOP_KEYS.iter().map(|k| k.to_string()).collect();
                t.sort();
                t
            }),
            (props(&p["admin"]), keys::<RawAdmin>()),
            (props(&p["admin"]["properties"]["tls"]), keys::<RawTls>()),
            (props(&p["guard"]), keys::<RawGuard>()),
            (
                props(&route["properties"]["guard"]),
                keys::<RawRouteGuard>(),
            ),
            (props(&p["access_log"]), keys::<RawAccessLog>()),
            (props(&p["listener"]["items"]), keys::<RawListener>()),
            (
                props(&p["listener"]["items"]["properties"]["limits"]),
                keys::<RawLimits>(),
            ),
            (
                props(&p["listener"]["items"]["properties"]["http2"]),
                keys::<RawHttp2>(),
            ),
            (
                props(&p["listener"]["items"]["properties"]["tls"]),
                keys::<RawTls>(),
            ),
            (
                props(
                    &p["listener"]["items"]["properties"]["tls"]["properties"]["certificates"]["items"],
                ),
                keys::<RawCertificate>(),
            ),
            (props(route), keys::<RawRoute>()),
            (props(&route["properties"]["match"]), keys::<RawMatch>()),
            (
                props(&route["properties"]["match"]["properties"]["headers"]["items"]),
                keys::<RawHeader>(),
            ),
            (props(pool), keys::<RawPool>()),
            (props(&pool["properties"]["hash"]), keys::<RawHash>()),
            (
                props(&pool["properties"]["backends"]["items"]),
                keys::<RawBackend>(),
            ),
            (props(&pool["properties"]["health"]), keys::<RawHealth>()),
            (props(&pool["properties"]["outlier"]), keys::<RawOutlier>()),
            (
                props(&pool["properties"]["timeouts"]),
                keys::<RawTimeouts>(),
            ),
            (props(&pool["properties"]["retries"]), keys::<RawRetries>()),
        ] {
            assert_eq!(
                got, want,
                "the schema and the parser disagree; update schema.rs"
            );
        }
    }
}
