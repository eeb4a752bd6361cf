//! A client's text frame through the edge's decode path: envelope, trace
//! context, command kind, arguments and their validation, content
//! inspection. A command that decodes must encode to JSON that decodes to
//! the same command.
#![no_main]

use edge::fuzzing::{Decoded, frame};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer refuses text frames that are not UTF-8 (1007).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Decoded::Command(command) = frame(text) else {
        return;
    };
    let Ok(Value::Object(mut body)) = serde_json::to_value(&command) else {
        panic!("a command encodes to a JSON object: {command:?}");
    };
    body.remove("type");
    match command.kind().decode(body) {
        Ok(again) => assert_eq!(*command, again, "a command encodes to itself"),
        Err(error) => panic!("a decoded command does not decode again: {error:?}: {command:?}"),
    }
});
