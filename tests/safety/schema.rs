//! `fulcrum schema`: JSON Schemas that accept every example config and
//! rules file (read as JSON), refuse what `check` refuses for the shapes a
//! schema can see (no listener, no backend, a host name or an out-of-range
//! port for an address, a duration without a unit), and name every key the
//! parser accepts. The validator here covers the keywords the schemas use.

use serde_json::Value;

use super::{json, run};

fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{path}: expected {t}, found {v}"));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errors.push(format!("{path}: {v} not in {e:?}"));
    }
    if let (Some(p), Some(s)) = (schema.get("pattern").and_then(Value::as_str), v.as_str())
        && !regex::Regex::new(p).unwrap().is_match(s)
    {
        errors.push(format!("{path}: {s:?} does not match {p}"));
    }
    if let Some(a) = v.as_array() {
        let len = a.len() as u64;
        if schema
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            errors.push(format!("{path}: fewer than minItems"));
        }
        if schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            errors.push(format!("{path}: more than maxItems"));
        }
    }
    if let Some(x) = v.as_f64() {
        let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
        if bound("minimum").is_some_and(|m| x < m)
            || bound("maximum").is_some_and(|m| x > m)
            || bound("exclusiveMinimum").is_some_and(|m| x <= m)
            || bound("exclusiveMaximum").is_some_and(|m| x >= m)
        {
            errors.push(format!("{path}: {x} out of range"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(req.as_str().unwrap()) {
                errors.push(format!("{path}: missing {req}"));
            }
        }
        for (k, val) in obj {
            let sub = props.and_then(|p| p.get(k));
            match (sub, schema.get("additionalProperties")) {
                (Some(s), _) => validate(s, val, &format!("{path}.{k}"), errors),
                (None, Some(Value::Bool(false))) => errors.push(format!("{path}: unknown key {k}")),
                (None, Some(s)) if s.is_object() => {
                    validate(s, val, &format!("{path}.{k}"), errors)
                }
                _ => {}
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), schema.get("items")) {
        for (i, x) in a.iter().enumerate() {
            validate(items, x, &format!("{path}[{i}]"), errors);
        }
    }
}

#[test]
fn schema_accepts_every_example_and_covers_every_top_level_key() {
    let out = run(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema = json(&out);
    for path in crate::example_configs() {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = toml::from_str(&text).unwrap();
        let mut errors = Vec::new();
        validate(&schema, &doc, "", &mut errors);
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
    // A wrong key is refused, as the parser refuses it.
    let mut errors = Vec::new();
    validate(
        &schema,
        &serde_json::json!({ "listner": [] }),
        "",
        &mut errors,
    );
    assert!(
        errors.contains(&": unknown key listner".to_owned()),
        "{errors:?}"
    );
    // Every top-level key the parser accepts is described: `check` lists
    // them in its hint for an unknown top-level key.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "zzzzzzzz = 1\n").unwrap();
    let out = run(&["check", "--format", "json", bad.to_str().unwrap()]);
    let hint = json(&out)["diagnostics"][0]["hint"]
        .as_str()
        .unwrap()
        .to_owned();
    let accepted: Vec<&str> = hint.split('`').skip(1).step_by(2).collect();
    assert!(accepted.len() >= 6, "{hint}");
    let props = schema["properties"].as_object().unwrap();
    for k in accepted {
        assert!(
            props.contains_key(k),
            "top-level key `{k}` is missing from the schema"
        );
    }
}

fn errors(schema: &Value, doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    validate(schema, doc, "", &mut errors);
    errors
}

fn toml_doc(text: &str) -> Value {
    toml::from_str(text).unwrap()
}

const SMALL: &str = "[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\n\n[[route]]\nname = \"all\"\npool = \"web\"\n\n[pool.web]\nbackends = [{ addr = \"127.0.0.1:9201\" }]\ntimeouts = { connect = \"1s 500ms\" }\n";

/// What the schema refuses, `check` refuses too: an editor never flags a
/// config that runs, nor passes one that does not.
#[test]
fn the_config_schema_refuses_what_check_refuses() {
    let schema = json(&run(&["schema"]));
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        run(&["check", p.to_str().unwrap()]).status.code()
    };
    assert!(errors(&schema, &toml_doc(SMALL)).is_empty());
    assert_eq!(check(SMALL), Some(0));
    for (what, text) in [
        (
            "no listener",
            SMALL.replace(
                "[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\n",
                "",
            ),
        ),
        (
            "no backend",
            SMALL.replace("[{ addr = \"127.0.0.1:9201\" }]", "[]"),
        ),
        (
            "a host name",
            SMALL.replace("127.0.0.1:9201", "web-1.internal:9201"),
        ),
        (
            "a port out of range",
            SMALL.replace("127.0.0.1:8080", "127.0.0.1:80800"),
        ),
        (
            "a duration without a unit",
            SMALL.replace("1s 500ms", "1500"),
        ),
        (
            "a duration in parsecs",
            SMALL.replace("1s 500ms", "2 parsecs"),
        ),
    ] {
        assert!(
            !errors(&schema, &toml_doc(&text)).is_empty(),
            "the schema accepts {what}"
        );
        assert_eq!(check(&text), Some(78), "check accepts {what}");
    }
    let v6 = SMALL.replace("127.0.0.1:8080", "[::1]:8080");
    assert!(errors(&schema, &toml_doc(&v6)).is_empty());
}

#[test]
fn the_rules_schema_accepts_every_rules_file_and_refuses_bad_rules() {
    for kind in ["rules", "standards", "tests"] {
        assert_eq!(run(&["schema", kind]).status.code(), Some(0), "{kind}");
    }
    let schema = json(&run(&["schema", "rules"]));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("tests/fixtures/incidents/standards.toml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".toml") && (name.contains("standards") || name.contains("tests")) {
            files.push(p);
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        let doc = toml_doc(&std::fs::read_to_string(f).unwrap());
        let e = errors(&schema, &doc);
        assert!(e.is_empty(), "{}: {e:#?}", f.display());
    }
    for (what, rule) in [
        ("an unknown key", "name = \"x\"\nexpect_pol = \"auth\""),
        ("no name", "expect_pool = \"auth\""),
        (
            "a share above 1",
            "name = \"x\"\npool = \"a\"\nmax_backend_share = 1.5",
        ),
        (
            "a host name as a backend",
            "name = \"x\"\npool = \"a\"\nallowed_backends = [\"auth.internal\"]",
        ),
        (
            "a one-bound range",
            "name = \"x\"\npool = \"a\"\nconnect_timeout = [\"1s\"]",
        ),
        (
            "an unknown algorithm",
            "name = \"x\"\npool = \"a\"\nalgorithms = [\"fastest\"]",
        ),
    ] {
        let doc = toml_doc(&format!("[[rule]]\n{rule}\n"));
        assert!(
            !errors(&schema, &doc).is_empty(),
            "the rules schema accepts {what}"
        );
    }
    let described = &schema["properties"]["rule"]["items"]["properties"]["allowed_backends"];
    assert!(described["description"].as_str().unwrap().contains("CIDR"));
}
