//! The `parley` binary's start-up contract: `--help`, and invalid config
//! stopping start-up with exit code 64 and the key's name.

use std::process::Command;

fn parley() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    command.env_remove("PARLEY_CONFIG");
    command
}

#[test]
fn help_lists_the_options_and_the_environment_convention() {
    let output = parley().arg("--help").output().expect("run parley --help");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--config"), "{text}");
    assert!(text.contains("PARLEY_"), "{text}");
    assert!(
        text.contains("whole suite"),
        "says what the binary is: {text}"
    );
}

#[test]
fn an_invalid_value_stops_start_up_naming_the_key() {
    let output = parley()
        .env("PARLEY_EDGE_LISTEN", "not-an-address")
        .output()
        .expect("run parley");
    assert_eq!(output.status.code(), Some(64));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("edge.listen"), "{text}");

    let output = parley()
        .env("PARLEY_AUTH_HS256_SECRET", "too-short")
        .output()
        .expect("run parley");
    assert_eq!(output.status.code(), Some(64));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("auth.hs256_secret") && !text.contains("too-short"),
        "{text}"
    );
}

#[test]
fn an_unusable_verification_key_stops_start_up_naming_it() {
    let dir = std::env::temp_dir().join(common::ids::new_id("parley-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("parley.toml");
    std::fs::write(
        &path,
        "[[auth.keys]]\nkid = \"k1\"\nalgorithms = [\"RS256\"]\n\
         public_key = \"-----BEGIN PUBLIC KEY-----\\nbm90IGEga2V5\\n-----END PUBLIC KEY-----\\n\"\n",
    )
    .expect("write");
    let output = parley()
        .arg("--config")
        .arg(&path)
        .env("PARLEY_EDGE_LISTEN", "127.0.0.1:0")
        .env("PARLEY_AUTH_LISTEN", "127.0.0.1:0")
        .env("PARLEY_CHAT_LISTEN", "127.0.0.1:0")
        .env("PARLEY_AI_LISTEN", "127.0.0.1:0")
        .env("PARLEY_PRESENCE_LISTEN", "127.0.0.1:0")
        .env(
            "PARLEY_CHAT_DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("chat.db").display()),
        )
        .env("PARLEY_ATTACHMENTS_DIR", dir.join("attachments"))
        .env("PARLEY_BUS_BACKEND", "memory")
        .env("PARLEY_PRESENCE_BACKEND", "memory")
        .output()
        .expect("run parley");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("auth.keys[0].public_key"), "{text}");
}

#[test]
fn a_missing_config_file_is_reported() {
    let output = parley()
        .args(["--config", "/nonexistent/parley.toml"])
        .output()
        .expect("run parley");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/parley.toml"));
}

/// Stops the child process when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_one_process_binary_allows_dev_login_by_default() {
    use std::io::BufRead;

    let dir = std::env::temp_dir().join(common::ids::new_id("parley-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut command = parley();
    for key in [
        "PARLEY_EDGE_LISTEN",
        "PARLEY_AUTH_LISTEN",
        "PARLEY_CHAT_LISTEN",
        "PARLEY_AI_LISTEN",
        "PARLEY_PRESENCE_LISTEN",
    ] {
        command.env(key, "127.0.0.1:0");
    }
    command
        .env(
            "PARLEY_CHAT_DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("chat.db").display()),
        )
        .env("PARLEY_ATTACHMENTS_DIR", dir.join("attachments"))
        .env("PARLEY_BUS_BACKEND", "memory")
        .env("PARLEY_PRESENCE_BACKEND", "memory")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = Running(command.spawn().expect("start parley"));
    let stdout = child.0.stdout.take().expect("stdout");
    let url = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split_whitespace()
                    .find(|word| word.starts_with("ws://"))
                    .map(str::to_string)
            })
    })
    .await
    .expect("reader")
    .expect("parley prints the edge's address");

    let mut client = crate::helpers::Client::connect(&url, &[])
        .await
        .expect("connect");
    let reply = client
        .ok("auth", serde_json::json!({"dev_user": "alice"}))
        .await;
    assert_eq!(reply["user"]["id"], "alice");
    drop(child);
    let _ = std::fs::remove_dir_all(dir);
}
