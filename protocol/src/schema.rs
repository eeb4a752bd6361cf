//! The protocol as documents for other languages: a JSON Schema of every
//! command and server frame (`docs/protocol.schema.json`) and an AsyncAPI 3.0
//! description of the `/ws` channel (`docs/asyncapi.yaml`), both generated
//! from the Rust types. `PARLEY_BLESS=1 cargo test -p protocol` rewrites the
//! checked-in copies; without it the test fails when they are stale.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::commands::{ClientCommand, CommandKind};
use crate::frames::{PROTOCOL, ServerFrame};

/// The JSON Schema (draft 2020-12) of the protocol: `ClientCommand` and
/// `ServerFrame` with every type they use under `$defs`.
pub fn json_schema() -> Value {
    let (defs, command, frame) = definitions();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/parley-chat/parley/docs/protocol.schema.json",
        "title": format!("Parley WebSocket protocol {PROTOCOL}"),
        "description": "Every frame is one JSON object in a text frame, tagged by `type`. Clients send ClientCommand; the server sends ServerFrame.",
        "oneOf": [command, frame],
        "$defs": defs,
    })
}

/// The AsyncAPI 3.0 document of the `/ws` channel.
pub fn asyncapi() -> Value {
    let (defs, _, _) = definitions();
    let defs = rebase(Value::Object(defs), "#/$defs/", "#/components/schemas/");
    let Value::Object(schemas) = defs else {
        return Value::Null;
    };
    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    let mut operations = Map::new();
    let mut sent = Vec::new();
    for kind in CommandKind::ALL {
        let spec = kind.spec();
        let key = format!("command.{}", spec.name);
        let payload = variant_schema(&schemas, "ClientCommand", spec.name);
        messages.insert(
            key.clone(),
            json!({
                "name": spec.name,
                "title": spec.name,
                "summary": spec.summary.trim(),
                "payload": payload,
                "x-parley-needs-auth": spec.needs_auth,
            }),
        );
        channel_messages.insert(
            key.clone(),
            json!({"$ref": format!("#/components/messages/{key}")}),
        );
        sent.push(json!({"$ref": format!("#/channels/ws/messages/{key}")}));
    }
    let mut received = Vec::new();
    for (name, summary) in ServerFrame::ALL {
        let key = format!("frame.{name}");
        let payload = variant_schema(&schemas, "ServerFrame", name);
        messages.insert(
            key.clone(),
            json!({"name": name, "title": name, "summary": summary.trim(), "payload": payload}),
        );
        channel_messages.insert(
            key.clone(),
            json!({"$ref": format!("#/components/messages/{key}")}),
        );
        received.push(json!({"$ref": format!("#/channels/ws/messages/{key}")}));
    }
    operations.insert(
        "sendCommand".into(),
        json!({
            "action": "receive",
            "summary": "Commands a client sends; one with an `id` gets exactly one `reply`.",
            "channel": {"$ref": "#/channels/ws"},
            "messages": sent,
        }),
    );
    operations.insert(
        "receiveFrame".into(),
        json!({
            "action": "send",
            "summary": "Frames the server sends: `hello`, replies, errors and events.",
            "channel": {"$ref": "#/channels/ws"},
            "messages": received,
        }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Parley WebSocket protocol",
            "version": PROTOCOL,
            "description": "Generated from the `protocol` crate; docs/protocol.md explains the semantics.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "127.0.0.1:8080", "protocol": "ws", "description": "`cargo run`"},
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "title": "The WebSocket endpoint",
                "messages": channel_messages,
            },
        },
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    })
}

/// The AsyncAPI document as YAML.
pub fn asyncapi_yaml() -> String {
    let header = "# Generated from the `protocol` crate: do not edit by hand.\n# Regenerate with `PARLEY_BLESS=1 cargo test -p protocol`.\n";
    format!(
        "{header}{}",
        serde_norway::to_string(&asyncapi()).unwrap_or_default()
    )
}

/// The JSON Schema as pretty JSON with a trailing newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// Every type's schema, and references to the two top-level enums.
fn definitions() -> (Map<String, Value>, Value, Value) {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let command = generator.subschema_for::<ClientCommand>().to_value();
    let frame = generator.subschema_for::<ServerFrame>().to_value();
    let defs = generator
        .take_definitions(true)
        .into_iter()
        .collect::<Map<String, Value>>();
    (defs, command, frame)
}

/// The schema of one variant of a `type`-tagged enum.
fn variant_schema(schemas: &Map<String, Value>, enum_name: &str, tag: &str) -> Value {
    schemas
        .get(enum_name)
        .and_then(|s| s.get("oneOf"))
        .and_then(Value::as_array)
        .and_then(|variants| {
            variants
                .iter()
                .find(|v| v.pointer("/properties/type/const") == Some(&Value::from(tag)))
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// Rewrites `$ref`s from one base to another.
fn rebase(value: Value, from: &str, to: &str) -> Value {
    match value {
        Value::String(s) if s.starts_with(from) => Value::String(s.replacen(from, to, 1)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| rebase(v, from, to)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, rebase(v, from, to)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn docs(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(name)
    }

    /// Fails when a checked-in document differs from what the types say;
    /// `PARLEY_BLESS=1` rewrites it instead.
    fn check(name: &str, generated: &str) {
        let path = docs(name);
        if std::env::var_os("PARLEY_BLESS").is_some() {
            std::fs::write(&path, generated).expect("write");
            return;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == generated,
            "docs/{name} is stale: run `PARLEY_BLESS=1 cargo test -p protocol` and commit it"
        );
    }

    #[test]
    fn the_checked_in_schema_and_asyncapi_are_current() {
        check("protocol.schema.json", &json_schema_text());
        check("asyncapi.yaml", &asyncapi_yaml());
    }

    #[test]
    fn every_command_and_frame_has_a_message_with_a_payload() {
        let doc = asyncapi();
        let messages = doc["components"]["messages"].as_object().expect("messages");
        assert_eq!(
            messages.len(),
            CommandKind::ALL.len() + ServerFrame::ALL.len()
        );
        for (key, message) in messages {
            assert!(message["payload"].is_object(), "{key} has no payload");
        }
        let text = serde_json::to_string(&doc).expect("json");
        assert!(
            !text.contains("#/$defs/"),
            "every $ref points into components"
        );
    }
}
