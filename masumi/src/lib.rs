//! Masumi's agentic-service API (MIP-003) for kodo flows: the pieces that
//! do not depend on HTTP.
//!
//! - [`input_hash`]: MIP-004's hash of a job's input, SHA-256 (hex) of the
//!   purchaser's identifier, `;`, and the RFC 8785 canonical JSON of the
//!   input data. The canonical form comes from `serde_json_canonicalizer`
//!   (JCS: sorted keys, ECMAScript number forms, minimal string escapes).
//! - [`input_schema`]: a flow's form (Kodosumi's element shapes) as MIP-003
//!   input fields (`id`, `type`, `name`, `data`, `validations`).

use serde_json::{Value, json};
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
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

#[cfg(test)]
mod tests;
