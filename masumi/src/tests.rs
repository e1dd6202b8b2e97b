//! Known answers: RFC 8785's own examples for the canonical form, and
//! `sha256sum` (coreutils) for the hash of a canonical text given here.

use super::*;
use std::io::Write;

/// RFC 8785 §3.2.2: numbers in ECMAScript form, minimal string escapes.
#[test]
fn canonical_json_matches_rfc_8785s_sample() {
    let input: Value = serde_json::from_str(
        r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#,
    )
    .unwrap();
    let expected = "{\"literals\":[null,true,false],\
                    \"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
                    \"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
    assert_eq!(canonical_json(&input), expected);
}

/// RFC 8785 §3.2.3: keys sorted by their UTF-16 code units (the emoji's
/// surrogates sort before U+FB33), nested objects too.
#[test]
fn canonical_json_sorts_keys_by_utf16_code_units() {
    let input = json!({
        "\u{20ac}": "Euro Sign",
        "\r": "Carriage Return",
        "\u{fb33}": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\u{1f600}": "Emoji: Grinning Face",
        "\u{80}": "Control",
        "\u{f6}": {"b": 2.0, "a": [1.5, -0.0]},
    });
    let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                    \"\u{f6}\":{\"a\":[1.5,0],\"b\":2},\"\u{20ac}\":\"Euro Sign\",\
                    \"\u{1f600}\":\"Emoji: Grinning Face\",\
                    \"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
    assert_eq!(canonical_json(&input), expected);
}

/// SHA-256 of `text`, by `sha256sum`.
fn sha256sum(text: &str) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn the_input_hash_is_sha256_of_purchaser_semicolon_canonical_json() {
    let input =
        json!({"text": "Grüße, \u{1f600}", "n": 1.10, "nested": {"z": [1e21, 1e-7], "a": null}});
    // The canonical text written out by hand, from RFC 8785's rules.
    let canonical =
        "{\"n\":1.1,\"nested\":{\"a\":null,\"z\":[1e+21,1e-7]},\"text\":\"Grüße, \u{1f600}\"}";
    assert_eq!(canonical_json(&input), canonical);
    let purchaser = "purchaser-0001";
    assert_eq!(
        input_hash(purchaser, &input),
        sha256sum(&format!("{purchaser};{canonical}"))
    );
    // Another purchaser, another hash.
    assert_ne!(input_hash("other", &input), input_hash(purchaser, &input));
}

#[test]
fn a_form_becomes_mip_003_fields() {
    let elements = [
        json!({"type": "markdown", "text": "# Greet someone"}),
        json!({"type": "text", "name": "name", "label": "Name", "required": true, "placeholder": "ann"}),
        json!({"type": "number", "name": "times", "min_value": 1, "max_value": 5}),
        json!({"type": "boolean", "name": "loud", "label": "Loud"}),
        json!({"type": "select", "name": "tone", "option": [{"name": "warm"}, {"name": "cool"}]}),
        json!({"type": "submit", "text": "Go"}),
    ];
    assert_eq!(
        input_schema(&elements),
        [
            json!({"id": "text-1", "type": "none", "name": "# Greet someone"}),
            json!({"id": "name", "type": "string", "name": "Name", "data": {"placeholder": "ann"}}),
            json!({"id": "times", "type": "number", "name": "times", "validations": [
                {"validation": "min", "value": "1"},
                {"validation": "max", "value": "5"},
                {"validation": "optional", "value": "true"},
            ]}),
            json!({"id": "loud", "type": "boolean", "name": "Loud", "validations": [
                {"validation": "optional", "value": "true"},
            ]}),
            json!({"id": "tone", "type": "option", "name": "tone", "data": {"values": ["warm", "cool"]},
            "validations": [
                {"validation": "min", "value": "1"},
                {"validation": "max", "value": "1"},
                {"validation": "optional", "value": "true"},
            ]}),
        ]
    );
}

#[test]
fn mip_003_values_become_the_forms() {
    let elements = [
        json!({"type": "boolean", "name": "loud"}),
        json!({"type": "boolean", "name": "quiet"}),
        json!({"type": "select", "name": "tone", "option": [{"name": "warm"}, {"name": "cool"}]}),
        json!({"type": "select", "name": "mood", "option": [{"name": "calm"}, {"name": "glad"}]}),
        json!({"type": "select", "name": "pace", "option": [{"name": "slow"}]}),
        json!({"type": "number", "name": "times"}),
    ];
    let given = json!({
        "loud": true, "quiet": false, "tone": ["cool"], "mood": 1, "pace": ["slow", "fast"],
        "times": 2.5, "extra": "kept"
    });
    assert_eq!(
        Value::Object(form_inputs(&elements, given.as_object().unwrap())),
        json!({
            "loud": "on", "tone": "cool", "mood": "glad", "pace": ["slow", "fast"],
            "times": 2.5, "extra": "kept"
        })
    );
}

#[test]
fn a_lock_shows_its_form_or_one_answer_field() {
    let form = json!({"form": [{"type": "text", "name": "why", "required": true}], "data": 1});
    assert_eq!(
        lock_fields("ask", &form),
        [json!({"id": "why", "type": "string", "name": "why"})]
    );
    assert_eq!(
        lock_fields("approve", &json!({"question": "Approve it?"})),
        [json!({"id": "answer", "type": "string", "name": "approve",
                "data": {"description": "Approve it?"}})]
    );
    assert_eq!(
        lock_fields("n", &json!([1, 2]))[0]["data"]["description"],
        "[1,2]"
    );
    assert!(lock_fields("n", &Value::Null)[0].get("data").is_none());
    assert_eq!(
        form_elements(&json!({"elements": [{"type": "hr"}]}))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_result_is_text() {
    assert_eq!(result_text("\"done: 3\""), "done: 3");
    assert_eq!(result_text("{\"n\":3}"), "{\"n\":3}");
}
