//! The `parley-auth` binary's start-up contract: a key only auth-service can
//! parse stops start-up like an invalid config file (exit 64, naming the
//! key), through the same exit path that flushes telemetry.

use std::process::Command;

#[test]
fn an_unusable_verification_key_exits_64_naming_it() {
    // Passes config validation (one key, one algorithm); only parsing the
    // key finds that it is not one.
    let path = std::env::temp_dir().join(format!("{}.toml", common::ids::new_id("auth-cli")));
    let toml =
        "[[auth.keys]]\nkid = \"k1\"\nalgorithms = [\"ES256\"]\npublic_key = \"not a key\"\n";
    std::fs::write(&path, toml).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_parley-auth"))
        .env_remove("PARLEY_CONFIG")
        .arg("--config")
        .arg(&path)
        .env("PARLEY_AUTH_LISTEN", "127.0.0.1:0")
        .env("PARLEY_BUS_BACKEND", "memory")
        .env("PARLEY_AUTH_BACKEND", "memory")
        .env("PARLEY_SERVICES_CREDENTIAL", "c".repeat(32))
        .output()
        .expect("run parley-auth");
    let _ = std::fs::remove_file(&path);
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("parley-auth: invalid configuration")
            && text.contains("auth.keys[0].public_key"),
        "{text}"
    );
}
