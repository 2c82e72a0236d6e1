//! `fulcrum schema`: a JSON Schema that accepts every example config (read
//! as JSON) and names every top-level key the parser accepts. The validator
//! here covers the keywords the schema uses.

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
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let doc: Value = toml::from_str(&text).unwrap();
            let mut errors = Vec::new();
            validate(&schema, &doc, "", &mut errors);
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 2);
    // A wrong key is refused, as the parser refuses it.
    let mut errors = Vec::new();
    validate(
        &schema,
        &serde_json::json!({ "listner": [] }),
        "",
        &mut errors,
    );
    assert_eq!(errors.len(), 1);
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
