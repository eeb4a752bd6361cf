//! The protocol's JSON shape of contract types, shared by every producer of
//! client-facing events so that a message looks the same wherever it appears.

use serde_json::{Map, Value, json};

use crate::chat::v1::{Message, Notification, Room, Visibility};

/// The protocol name of a room visibility.
pub fn visibility_name(v: i32) -> &'static str {
    match Visibility::try_from(v).unwrap_or(Visibility::Unspecified) {
        Visibility::Public => "public",
        Visibility::Private => "private",
        Visibility::Direct => "direct",
        Visibility::Unspecified => "unspecified",
    }
}

/// Parses a protocol visibility name.
pub fn parse_visibility(s: &str) -> Option<Visibility> {
    match s {
        "public" => Some(Visibility::Public),
        "private" => Some(Visibility::Private),
        "direct" => Some(Visibility::Direct),
        _ => None,
    }
}

/// A message object as clients see it.
pub fn message(m: &Message) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(m.id));
    o.insert("room".into(), json!(m.room_id));
    o.insert("seq".into(), json!(m.seq));
    let sender = m.sender.as_ref();
    o.insert(
        "sender".into(),
        json!({
            "id": sender.map(|s| s.id.as_str()).unwrap_or_default(),
            "name": sender.map(|s| s.name.as_str()).unwrap_or_default(),
        }),
    );
    o.insert("text".into(), json!(m.text));
    if let Some(thread) = &m.thread_id {
        o.insert("thread".into(), json!(thread));
    }
    o.insert("created_at".into(), json!(m.created_at));
    if let Some(edited) = m.edited_at {
        o.insert("edited_at".into(), json!(edited));
    }
    o.insert("deleted".into(), json!(m.deleted));
    o.insert("client_msg_id".into(), json!(m.client_msg_id));
    let reactions: Map<String, Value> = m
        .reactions
        .iter()
        .map(|r| (r.emoji.clone(), json!(r.user_ids)))
        .collect();
    o.insert("reactions".into(), Value::Object(reactions));
    if !m.metadata_json.is_empty() {
        if let Ok(meta) = serde_json::from_str::<Value>(&m.metadata_json) {
            o.insert("metadata".into(), meta);
        }
    }
    Value::Object(o)
}

/// A room object as clients see it.
pub fn room(r: &Room) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "visibility": visibility_name(r.visibility),
        "owner": r.owner_id,
        "last_seq": r.last_seq,
        "created_at": r.created_at,
        "unread": r.unread,
    })
}

/// The `message.new` room-log event for a stored message.
pub fn message_new_event(m: &Message) -> Value {
    json!({"type": "message.new", "room": m.room_id, "seq": m.seq, "message": message(m)})
}

/// A notification object as clients see it: its stored JSON plus `read`.
pub fn notification(n: &Notification) -> Value {
    let mut value: Value = serde_json::from_str(&n.json).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut value {
        map.insert("read".into(), json!(n.read));
    }
    value
}
