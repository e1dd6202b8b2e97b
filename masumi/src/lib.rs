//! Masumi's agentic-service API (MIP-003) for kodo flows: the pieces that
//! do not depend on HTTP.
//!
//! - [`input_hash`]: MIP-004's hash of a job's input, SHA-256 (hex) of the
//!   purchaser's identifier, `;`, and the RFC 8785 canonical JSON of the
//!   input data. The canonical form comes from `serde_json_canonicalizer`
//!   (JCS: sorted keys, ECMAScript number forms, minimal string escapes).
//! - [`input_schema`]: a flow's form (Kodosumi's element shapes) as MIP-003
//!   input fields (`id`, `type`, `name`, `data`, `validations`);
//!   [`lock_fields`]: an open lock's.
//! - [`form_inputs`]: MIP-003 values as the form takes them;
//!   [`result_text`]: a `final` payload as MIP-003's result string.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The RFC 8785 (JCS) canonical form of `value`.
pub fn canonical_json(value: &Value) -> String {
    serde_json_canonicalizer::to_string(value).expect("a JSON value always canonicalizes")
}

/// MIP-004's input hash: SHA-256, as lowercase hex, of
/// `identifier_from_purchaser`, `;`, and the canonical JSON of `input_data`.
pub fn input_hash(identifier_from_purchaser: &str, input_data: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(identifier_from_purchaser.as_bytes());
    hasher.update(b";");
    hasher.update(canonical_json(input_data).as_bytes());
    hex::encode(hasher.finalize())
}

/// The MIP-003 input fields of a form's `elements` (Kodosumi's shapes, as
/// `GET /flows/{flow}` shows them). Inputs are required unless marked
/// `optional`, as MIP-003 assumes; layout elements other than text
/// (`markdown`, `html`) are left out, those with text become `none` fields.
pub fn input_schema(elements: &[Value]) -> Vec<Value> {
    let mut fields = Vec::new();
    for (i, element) in elements.iter().enumerate() {
        let kind = element["type"].as_str().unwrap_or_default();
        let name = element["name"].as_str();
        let label = element["label"]
            .as_str()
            .or(name)
            .unwrap_or_default()
            .to_string();
        let mut data = serde_json::Map::new();
        if let Some(placeholder) = element["placeholder"].as_str() {
            data.insert("placeholder".into(), json!(placeholder));
        }
        let mut validations = Vec::new();
        let field_type = match kind {
            "markdown" | "html" => {
                let Some(text) = element["text"].as_str().filter(|t| !t.is_empty()) else {
                    continue;
                };
                fields.push(json!({
                    "id": format!("text-{}", i + 1),
                    "type": "none",
                    "name": text,
                }));
                continue;
            }
            "text" | "password" | "date" | "time" | "datetime-local" => "string",
            "textarea" => "textarea",
            "number" => {
                for (key, validation) in [("min_value", "min"), ("max_value", "max")] {
                    if let Some(bound) = element[key].as_f64() {
                        validations
                            .push(json!({"validation": validation, "value": bound.to_string()}));
                    }
                }
                "number"
            }
            "boolean" => "boolean",
            "select" => {
                let values: Vec<&str> = element["option"]
                    .as_array()
                    .map(|o| o.iter().filter_map(|o| o["name"].as_str()).collect())
                    .unwrap_or_default();
                data.insert("values".into(), json!(values));
                validations.push(json!({"validation": "min", "value": "1"}));
                validations.push(json!({"validation": "max", "value": "1"}));
                "option"
            }
            _ => continue,
        };
        let Some(id) = name else { continue };
        // A checkbox left unchecked is an answer too: never required.
        if element["required"] != json!(true) || field_type == "boolean" {
            validations.push(json!({"validation": "optional", "value": "true"}));
        }
        let mut field = json!({"id": id, "type": field_type, "name": label});
        if !data.is_empty() {
            field["data"] = Value::Object(data);
        }
        if !validations.is_empty() {
            field["validations"] = json!(validations);
        }
        fields.push(field);
    }
    fields
}

/// The elements of a form, as `GET /flows/{flow}` shows it
/// (`{"elements": [...]}`), or a lock's data (`{"form": [...], "data": ...}`,
/// a Kodosumi app's `@app.lock`). None: no form.
pub fn form_elements(form: &Value) -> Option<&[Value]> {
    form.get("elements")
        .or_else(|| form.get("form"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
}

/// The id of the one field of a lock opened without a form: its value is
/// the lock's answer.
pub const ANSWER: &str = "answer";

/// The MIP-003 fields of lock `name` opened with `data`: its form's, or,
/// with none, one required text field [`ANSWER`], described by the lock's
/// question (`data.question`, a text `data`, or `data` as JSON).
pub fn lock_fields(name: &str, data: &Value) -> Vec<Value> {
    if let Some(elements) = form_elements(data) {
        return input_schema(elements);
    }
    let description = match data {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(
            other["question"]
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string),
        ),
    };
    let mut field = json!({"id": ANSWER, "type": "string", "name": name});
    if let Some(description) = description {
        field["data"] = json!({ "description": description });
    }
    vec![field]
}

/// MIP-003 `input_data` as a form of `elements` takes it: a boolean `true`
/// becomes Kodosumi's checkbox value `"on"` (`false` is left out, as an
/// unchecked box is), an option given as a one-value list or as an index
/// becomes the option's name. Anything else is kept as it is, for the form
/// to check.
pub fn form_inputs(elements: &[Value], input_data: &Map<String, Value>) -> Map<String, Value> {
    let mut inputs = input_data.clone();
    for element in elements {
        let Some(name) = element["name"].as_str() else {
            continue;
        };
        let Some(value) = inputs.get(name).cloned() else {
            continue;
        };
        match (element["type"].as_str().unwrap_or_default(), value) {
            ("boolean", Value::Bool(true)) => {
                inputs.insert(name.into(), json!("on"));
            }
            ("boolean", Value::Bool(false)) => {
                inputs.remove(name);
            }
            ("select", value) => {
                let one = match value {
                    Value::Array(mut values) if values.len() == 1 => values.remove(0),
                    other => other,
                };
                let by_index = one.as_u64().and_then(|i| {
                    element["option"]
                        .as_array()
                        .and_then(|o| o.get(usize::try_from(i).ok()?))
                        .and_then(|o| o["name"].as_str())
                });
                let chosen = by_index.map_or(one, |name| json!(name));
                inputs.insert(name.into(), chosen);
            }
            _ => {}
        }
    }
    inputs
}

/// A job's result as MIP-003 gives it (a string): the `final` event's
/// payload (JSON text) as its text when it is a string, else the JSON.
pub fn result_text(final_payload: &str) -> String {
    match serde_json::from_str::<Value>(final_payload) {
        Ok(Value::String(text)) => text,
        _ => final_payload.to_string(),
    }
}

#[cfg(test)]
mod tests;
