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
fn a_missing_config_file_is_reported() {
    let output = parley()
        .args(["--config", "/nonexistent/parley.toml"])
        .output()
        .expect("run parley");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/parley.toml"));
}
