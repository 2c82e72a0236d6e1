//! The JSON Schemas of the config file and of rules files (standards and
//! tests), for editors (`fulcrum schema`, docs/cli.md#fulcrum-schema).
//! Hand-written from the raw structs, so descriptions can say what the
//! validator will say; tests probe every raw struct's accepted keys through
//! serde and fail when a schema and the parser disagree. Draft 7 keywords
//! only, which taplo (VS Code's Even Better TOML) understands.

use serde_json::{Value, json};

use crate::standards::RULE_KEYS;
use crate::validate::ALGORITHMS;

const DRAFT: &str = "http://json-schema.org/draft-07/schema#";

/// humantime's units.
macro_rules! units {
    () => {
        "(nsec|ns|usec|us|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y)"
    };
}

/// humantime's syntax: one or more `NUMBER UNIT`, e.g. `1h 30m`. Zero
/// included: a bound of a rules file's range may be zero.
pub const DURATION_PATTERN: &str = concat!("^\\s*([0-9]+\\s*", units!(), "\\s*)+$");

/// [`DURATION_PATTERN`] with at least one non-zero number: the validator
/// refuses a zero duration for every config key (an interval or deadline
/// of zero means "never" or "immediately"). No lookahead: the `regex`
/// crate, which tests check the schema with, has none.
pub const NONZERO_DURATION_PATTERN: &str = concat!(
    "^\\s*([0-9]+\\s*",
    units!(),
    "\\s*)*[0-9]*[1-9][0-9]*\\s*",
    units!(),
    "\\s*([0-9]+\\s*",
    units!(),
    "\\s*)*$"
);

/// `IP:PORT`, IPv4 or bracketed IPv6, port 0 to 65535.
pub const ADDRESS_PATTERN: &str = "^\\s*([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]+\\]):(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})\\s*$";

fn duration(desc: &str) -> Value {
    json!({ "type": "string", "description": format!("{desc} A duration such as \"500ms\", \"2s\" or \"1m\"; not zero."), "pattern": NONZERO_DURATION_PATTERN })
}

fn address(desc: &str) -> Value {
    json!({ "type": "string", "description": format!("{desc} IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"; no host names."), "pattern": ADDRESS_PATTERN })
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

/// The config file's schema. Integer ranges are validate.rs's, so an editor
/// flags what `check` refuses; keep the two in step.
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
            "addr": address("The backend's address."),
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
            "backends": { "type": "array", "items": backend, "minItems": 1 },
            "health": object("Active health check.", json!({
                "path": { "type": "string" },
                "interval": duration("Between checks."),
                "timeout": duration("Per check."),
                "healthy_threshold": { "type": "integer", "minimum": 1, "maximum": 100 },
                "unhealthy_threshold": { "type": "integer", "minimum": 1, "maximum": 100 },
                "expect_status": { "type": "string", "description": "`200` or `200-399`." }
            }), &["path"]),
            "outlier": object("Passive outlier ejection.", json!({
                "consecutive_failures": { "type": "integer", "minimum": 1, "maximum": 1000 },
                "base_ejection": duration("First ejection."),
                "max_ejection": duration("Longest ejection."),
                "max_ejected_fraction": { "type": "number", "minimum": 0, "maximum": 1 },
                "enabled": { "type": "boolean" }
            }), &[]),
            "panic_threshold": { "type": "number", "minimum": 0, "maximum": 1 },
            "slow_start": duration("A backend that comes back or is added ramps up to its weight over this long (round_robin, least_request, random)."),
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
                "min_concurrent": { "type": "integer", "minimum": 0, "maximum": 1000 }
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
            "bind": address("The socket clients connect to; port 0 picks a free one."),
            "header_timeout": duration("For a complete request head."),
            "idle_timeout": duration("Between keep-alive requests."),
            "body_timeout": duration("Between two reads of a request body."),
            "min_body_rate": { "type": "integer", "minimum": 0, "maximum": 1073741824, "description": "Bytes per second a request body must average after body_timeout; 0: no minimum." },
            "send_timeout": duration("Longest a client may take no bytes of its response."),
            "limits": object("Request and connection limits.", json!({
                "max_header_bytes": { "type": "integer", "minimum": 8192, "maximum": 1048576 },
                "max_headers": { "type": "integer", "minimum": 8, "maximum": 1000 },
                "max_uri_bytes": { "type": "integer", "minimum": 256, "maximum": 65536 },
                "max_body_bytes": { "type": "integer", "minimum": 0, "maximum": 1099511627776u64 },
                "max_connections": { "type": "integer", "minimum": 1, "maximum": 1000000 }
            }), &[]),
            "http2": object("HTTP/2 from clients.", json!({
                "enabled": { "type": "boolean" },
                "only": { "type": "boolean", "description": "HTTP/2 alone: h2c by prior knowledge, or h2 by ALPN." },
                "max_concurrent_streams": { "type": "integer", "minimum": 1, "maximum": 10000 },
                "max_pending_reset_streams": { "type": "integer", "minimum": 1, "maximum": 10000 },
                "max_local_error_reset_streams": { "type": "integer", "minimum": 1, "maximum": 100000 },
                "keep_alive_interval": duration("Between PINGs to an idle client."),
                "keep_alive_timeout": duration("For a PING's answer.")
            }), &[]),
            "tls": tls.clone()
        }),
        &["name", "bind"],
    );
    json!({
        "$schema": DRAFT,
        "title": "Fulcrum config",
        "description": "See docs/config.md for every key.",
        "type": "object",
        "additionalProperties": false,
        "required": ["listener"],
        "properties": {
            "version": { "type": "string", "description": "A label for this config; default: a hash of the file." },
            "tests": { "type": "array", "items": { "type": "string" }, "description": "Rule files this config ships with, relative to it; every change must pass them." },
            "admin": object("The admin API, dashboard and /metrics.", json!({
                "listen": address("Where the admin API listens."),
                "token_file": { "type": "string", "description": "The file holding the bearer token." },
                "tls": tls
            }), &["listen"]),
            "guard": object("Detectors over live traffic that judge the last change and roll it back during its canary or probation. See docs/guard.md.", json!({
                "enabled": { "type": "boolean" },
                "rollback": { "type": "boolean" },
                "window": duration("The sliding window rates and shares are judged over."),
                "probation": duration("After promotion, how long a change is still rolled back on a failing verdict."),
                "attribution": duration("An alert within this long of a change names it."),
                "min_requests": { "type": "integer", "minimum": 5, "maximum": 1000000 },
                "confidence": { "type": "number", "exclusiveMinimum": 0.5, "exclusiveMaximum": 1 },
                "min_effect": { "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1 },
                "latency_ratio": { "type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 100 },
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
            "listener": { "type": "array", "items": listener, "minItems": 1 },
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

/// What docs/standards.md says of a rule key, for its description.
fn rule_doc(key: &str) -> String {
    crate::reference::rule_key(key)
        .unwrap_or("See docs/standards.md.")
        .to_owned()
}

/// The schema of a rules file: standards and config tests share one
/// language ([`crate::standards`]).
pub fn rules_schema() -> Value {
    let string = |k: &str| json!({ "type": "string", "description": rule_doc(k) });
    let flag = |k: &str| json!({ "type": "boolean", "description": rule_doc(k) });
    let range = |k: &str| {
        json!({
            "type": "array",
            "description": rule_doc(k),
            "minItems": 2,
            "maxItems": 2,
            "items": { "type": "string", "pattern": format!("^\\s*$|{DURATION_PATTERN}") }
        })
    };
    let mut props = serde_json::Map::new();
    props.insert(
        "name".into(),
        json!({ "type": "string", "description": "What the rule protects, printed when it breaks." }),
    );
    for &k in RULE_KEYS {
        let v = match k {
            "request" => {
                json!({ "type": "string", "description": rule_doc(k), "pattern": "^\\s*[A-Z][A-Z0-9_.-]*\\s+\\S+" })
            }
            "headers" => {
                json!({ "type": "object", "description": rule_doc(k), "additionalProperties": { "type": "string" } })
            }
            "expect_status" => {
                json!({ "type": "integer", "description": rule_doc(k), "enum": [404] })
            }
            "min_backends" => {
                json!({ "type": "integer", "description": rule_doc(k), "minimum": 0 })
            }
            "max_backend_share" => {
                json!({ "type": "number", "description": rule_doc(k), "exclusiveMinimum": 0, "maximum": 1 })
            }
            "algorithms" => {
                json!({ "type": "array", "description": rule_doc(k), "items": { "enum": ALGORITHMS } })
            }
            "allowed_backends" => json!({
                "type": "array",
                "description": rule_doc(k),
                "minItems": 1,
                "items": { "type": "string", "pattern": "^\\s*[0-9A-Fa-f.:\\[\\]]+(/[0-9]{1,3})?\\s*$" }
            }),
            "connect_timeout" | "response_timeout" | "idle_timeout" => range(k),
            "require_health_check"
            | "require_outlier_detection"
            | "every_pool_used"
            | "no_shadowed_routes"
            | "admin_on_loopback"
            | "require_version"
            | "probe" => flag(k),
            _ => string(k),
        };
        props.insert(k.into(), v);
    }
    let rule = json!({
        "type": "object",
        "description": "One rule: a name and assertions, all of which must hold.",
        "additionalProperties": false,
        "required": ["name"],
        "properties": props
    });
    let count =
        |desc: &str, min: u64| json!({ "type": "integer", "minimum": min, "description": desc });
    let traffic = object(
        "The synthetic traffic sample `max_backend_share` is simulated over (docs/standards.md#simulation).",
        json!({
            "requests": count("Requests in the sample (default 10000).", 1),
            "clients": count("Distinct client IPs, drawn uniformly (default 1000).", 1),
            "paths": count("Distinct paths, drawn uniformly (default 1000).", 1),
            "headers": { "type": "object", "description": "Each header the clients send, and how many distinct values it takes; no other header is sent.", "additionalProperties": { "type": "integer", "minimum": 1 } },
            "cookies": { "type": "object", "description": "Likewise for cookies.", "additionalProperties": { "type": "integer", "minimum": 1 } },
            "concurrency": count("Requests in flight per pool in the model, across its backends (default 8); each completes after this many later picks, for `least_request`.", 0),
            "seed": count("The sample's seed.", 0)
        }),
        &[],
    );
    json!({
        "$schema": DRAFT,
        "title": "Fulcrum standards or tests",
        "description": "[[rule]]s and an optional [traffic]; see docs/standards.md.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "rule": { "type": "array", "items": rule },
            "traffic": traffic
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

    #[test]
    fn rules_schema_covers_every_key_the_parser_accepts() {
        use crate::standards::{RawRule, RawTraffic};
        let s = rules_schema();
        let mut want = keys::<RawRule>();
        want.retain(|k| k != "name" && !crate::standards::REFUSED_RULE_KEYS.contains(&k.as_str()));
        let mut listed: Vec<String> = RULE_KEYS.iter().map(|k| k.to_string()).collect();
        listed.sort();
        assert_eq!(listed, want, "RULE_KEYS and RawRule disagree");
        want.push("name".into());
        want.sort();
        assert_eq!(props(&s["properties"]["rule"]["items"]), want);
        // A refused key stays out of the schema, so editors flag it too.
        for k in crate::standards::REFUSED_RULE_KEYS {
            assert!(s["properties"]["rule"]["items"]["properties"][k].is_null());
        }
        assert_eq!(props(&s["properties"]["traffic"]), keys::<RawTraffic>());
        for k in RULE_KEYS {
            let d = s["properties"]["rule"]["items"]["properties"][k]["description"]
                .as_str()
                .unwrap();
            assert_ne!(
                d, "See docs/standards.md.",
                "{k} has no row in docs/standards.md"
            );
        }
    }
}
