//! A form declared with a flow (command and Rust flows): Kodosumi's
//! element shapes (`{"type": "text", "name": ..., "label": ..., "required":
//! ...}`), checked by kodo itself before a launch is stored. Named elements
//! are the inputs; fields not in the form are left out.

use crate::admission::{Admission, Admitted, Refused};
use serde_json::{Map, Value, json};

/// A flow's form: its elements, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Form {
    elements: Vec<Value>,
}

/// Element types that carry no value.
const LAYOUT: &[&str] = &[
    "html", "markdown", "break", "hr", "errors", "submit", "cancel", "action",
];

/// Element types that take a value.
const INPUTS: &[&str] = &[
    "text",
    "password",
    "textarea",
    "date",
    "time",
    "datetime-local",
    "number",
    "boolean",
    "select",
];

impl Form {
    /// A form of `elements`; why not, naming the element, when one has no
    /// known `type`, or an input has no `name`.
    pub fn new(elements: Vec<Value>) -> Result<Self, String> {
        for (i, element) in elements.iter().enumerate() {
            let kind = element["type"].as_str().unwrap_or_default();
            if INPUTS.contains(&kind) {
                if element["name"].as_str().is_none_or(str::is_empty) {
                    return Err(format!("element {}: a {kind} needs a name", i + 1));
                }
            } else if !LAYOUT.contains(&kind) {
                return Err(format!(
                    "element {}: type {} is not one of {}",
                    i + 1,
                    element["type"],
                    [LAYOUT, INPUTS].concat().join(", ")
                ));
            }
        }
        Ok(Self { elements })
    }

    /// The inputs `submitted` gives, or the errors by field.
    pub fn check(&self, submitted: &Value) -> Result<Value, Value> {
        let mut inputs = Map::new();
        let mut errors = Map::new();
        for element in &self.elements {
            let kind = element["type"].as_str().unwrap_or_default();
            let Some(name) = element["name"].as_str().filter(|_| INPUTS.contains(&kind)) else {
                continue;
            };
            let given = submitted.get(name).filter(|v| !v.is_null() && *v != "");
            let value = match (kind, given) {
                ("boolean", v) => Ok(json!(
                    matches!(v, Some(v) if *v == json!(true) || *v == "on")
                )),
                (_, None) if element["required"] == json!(true) => Err("required".to_string()),
                (_, None) => Ok(Value::Null),
                ("number", Some(v)) => number(v, element),
                ("select", Some(v)) => option(v, element),
                (_, Some(Value::String(s))) => Ok(json!(s)),
                (_, Some(other)) => Err(format!("expected text, not {other}")),
            };
            match value {
                Ok(v) => {
                    inputs.insert(name.to_string(), v);
                }
                Err(why) => {
                    errors.insert(name.to_string(), json!([why]));
                }
            }
        }
        if errors.is_empty() {
            Ok(Value::Object(inputs))
        } else {
            Err(Value::Object(errors))
        }
    }
}

/// A number field's value (a JSON number, or text that is one), within its
/// `min_value` and `max_value`.
fn number(v: &Value, element: &Value) -> Result<Value, String> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
    .ok_or_else(|| format!("expected a number, not {v}"))?;
    if let Some(min) = element["min_value"].as_f64().filter(|min| n < *min) {
        return Err(format!("at least {min}"));
    }
    if let Some(max) = element["max_value"].as_f64().filter(|max| n > *max) {
        return Err(format!("at most {max}"));
    }
    Ok(match v {
        Value::Number(_) => v.clone(),
        _ => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
    })
}

/// A select field's value: the name of one of its options.
fn option(v: &Value, element: &Value) -> Result<Value, String> {
    let options: Vec<&str> = element["option"]
        .as_array()
        .map(|o| o.iter().filter_map(|o| o["name"].as_str()).collect())
        .unwrap_or_default();
    match v.as_str() {
        Some(s) if options.contains(&s) => Ok(json!(s)),
        _ => Err(format!("expected one of {}", options.join(", "))),
    }
}

#[async_trait::async_trait]
impl Admission for Form {
    async fn form(&self) -> Result<Value, String> {
        Ok(json!({"elements": self.elements}))
    }

    async fn admit(&self, _owner: &str, submitted: Value) -> Result<Admitted, Refused> {
        let inputs = self.check(&submitted).map_err(Refused::Invalid)?;
        Ok(Admitted {
            inputs,
            launch: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> Form {
        Form::new(vec![
            json!({"type": "markdown", "text": "# Greet"}),
            json!({"type": "text", "name": "name", "required": true}),
            json!({"type": "number", "name": "times", "min_value": 1, "max_value": 5}),
            json!({"type": "boolean", "name": "loud"}),
            json!({"type": "select", "name": "tone", "option": [{"name": "warm"}, {"name": "cool"}]}),
            json!({"type": "submit", "text": "Go"}),
        ])
        .unwrap()
    }

    #[test]
    fn checks_each_field_and_keeps_only_the_forms() {
        let ok = form()
            .check(&json!({"name": "ann", "times": "3", "loud": "on", "tone": "cool", "x": 1}));
        assert_eq!(
            ok,
            Ok(json!({"name": "ann", "times": 3.0, "loud": true, "tone": "cool"}))
        );
        let quiet = form().check(&json!({"name": "bo", "times": 2, "loud": false}));
        assert_eq!(
            quiet,
            Ok(json!({"name": "bo", "times": 2, "loud": false, "tone": null}))
        );
        let bad = form().check(&json!({"times": "9", "tone": "hot", "loud": "yes"}));
        assert_eq!(
            bad,
            Err(json!({
                "name": ["required"],
                "times": ["at most 5"],
                "tone": ["expected one of warm, cool"],
            }))
        );
        let wrong = form().check(&json!({"name": 3, "times": "three"}));
        assert_eq!(
            wrong,
            Err(
                json!({"name": ["expected text, not 3"], "times": ["expected a number, not \"three\""]})
            )
        );
    }

    #[test]
    fn a_bad_form_names_its_element() {
        let no_name = Form::new(vec![json!({"type": "text"})]).unwrap_err();
        assert_eq!(no_name, "element 1: a text needs a name");
        let unknown = Form::new(vec![
            json!({"type": "html"}),
            json!({"type": "slider", "name": "x"}),
        ]);
        assert!(
            unknown
                .unwrap_err()
                .starts_with("element 2: type \"slider\" is not one of")
        );
    }
}
