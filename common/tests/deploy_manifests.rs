//! The Kubernetes manifests and the code agree: every overlay under
//! deploy/k8s renders with `kubectl kustomize`, and each Deployment's
//! rendered config file and environment (secrets replaced by samples of the
//! shape deploy/README.md asks for) pass the binary's own config validation,
//! and the services whose replicas share state (auth, ai, presence) keep it
//! in Redis.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::config::{Backend, Config};
use serde_norway::Value;

/// The repository's deploy/k8s folder.
fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// Whether these tests run: where `kubectl` is installed, or always when
/// `PARLEY_TEST_DEPLOY` is set (CI sets it; then a missing kubectl fails).
fn enabled() -> bool {
    if std::env::var_os("PARLEY_TEST_DEPLOY").is_some() {
        return true;
    }
    let found = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok();
    if !found {
        eprintln!("note: kubectl is not installed; skipping the manifest tests");
    }
    found
}

/// The documents `kubectl kustomize` renders for `overlay`.
fn render(overlay: &str) -> Vec<Value> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(k8s_dir().join("overlays").join(overlay))
        .output()
        .expect("kubectl is installed");
    assert!(
        output.status.success(),
        "overlay {overlay} does not render: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("yaml"))
        .collect()
}

/// A value of the shape each Secret key must hold in `overlay`.
fn sample_secret(overlay: &str, key: &str) -> String {
    let production = overlay == "production";
    match key {
        "services-credential"
        | "bus-signing-key"
        | "auth-hs256-secret"
        | "postgres-password"
        | "redis-password" => "0123456789abcdef0123456789abcdef".into(),
        "ai-api-key" => "sk-sample".into(),
        "database-url" if production => "postgres://parley:pw@db.example:5432/parley\
             ?sslmode=verify-full&sslrootcert=/etc/parley/tls/ca.crt"
            .into(),
        "database-url" => "postgres://parley:pw@postgres:5432/parley".into(),
        "redis-url" if production => "rediss://parley:pw@redis.example:6380".into(),
        "redis-url" => "redis://:pw@redis:6379".into(),
        other => panic!("secret key {other} has no sample: document it and add one here"),
    }
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

/// A Parley Deployment as the code sees it.
struct Component {
    name: String,
    env: BTreeMap<String, String>,
    config_file: String,
    container_port: u16,
    grace_s: u64,
    pre_stop_s: u64,
}

fn components(overlay: &str, docs: &[Value]) -> Vec<Component> {
    let deployments = docs.iter().filter(|d| {
        str_at(d, &["kind"]) == Some("Deployment")
            && str_at(d, &["metadata", "labels", "app.kubernetes.io/part-of"]) == Some("parley")
    });
    deployments
        .map(|d| {
            let spec = &d["spec"]["template"]["spec"];
            let container = &spec["containers"][0];
            let command: Vec<&str> = container["command"]
                .as_sequence()
                .expect("command")
                .iter()
                .map(|v| v.as_str().expect("string"))
                .collect();
            let binary = command[0].rsplit('/').next().expect("path");
            let name = binary.strip_prefix("parley-").expect("a parley binary");
            assert_eq!(command[1], "--config", "{name} reads the ConfigMap");
            let mut env = BTreeMap::new();
            for var in container["env"].as_sequence().expect("env") {
                let key = str_at(var, &["name"]).expect("name").to_string();
                let value = match str_at(var, &["value"]) {
                    Some(v) => v.to_string(),
                    None => sample_secret(
                        overlay,
                        str_at(var, &["valueFrom", "secretKeyRef", "key"]).expect("secret key"),
                    ),
                };
                env.insert(key, value);
            }
            Component {
                name: name.to_string(),
                env,
                config_file: command[2].to_string(),
                container_port: container["ports"][0]["containerPort"]
                    .as_u64()
                    .expect("port") as u16,
                grace_s: spec["terminationGracePeriodSeconds"]
                    .as_u64()
                    .expect("grace period"),
                pre_stop_s: container["lifecycle"]["preStop"]["sleep"]["seconds"]
                    .as_u64()
                    .expect("preStop sleep"),
            }
        })
        .collect()
}

/// Writes the rendered `parley.toml` of `overlay` to a temporary file.
fn config_file(overlay: &str, docs: &[Value]) -> PathBuf {
    let toml = docs
        .iter()
        .find(|d| {
            str_at(d, &["kind"]) == Some("ConfigMap")
                && str_at(d, &["metadata", "name"]).is_some_and(|n| n.starts_with("parley-config-"))
        })
        .and_then(|d| str_at(d, &["data", "parley.toml"]))
        .expect("a hashed parley-config ConfigMap with parley.toml");
    let path = std::env::temp_dir().join(format!(
        "parley-deploy-{overlay}-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, toml).expect("write config");
    path
}

fn listen_port(config: &Config, component: &str) -> std::net::SocketAddr {
    match component {
        "edge" => config.edge.listen,
        "auth" => config.auth.listen,
        "chat" => config.chat.listen,
        "ai" => config.ai.listen,
        "presence" => config.presence.listen,
        other => panic!("unknown component {other}"),
    }
}

fn check_overlay(overlay: &str) {
    let docs = render(overlay);
    let file = config_file(overlay, &docs);
    let components = components(overlay, &docs);
    let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 5, "{overlay}: five components, got {names:?}");
    for component in &components {
        assert_eq!(component.config_file, "/etc/parley/parley.toml");
        let config = Config::load(Some(&file), component.env.clone())
            .and_then(|c| c.check_components(&[&component.name], true).map(|()| c))
            .unwrap_or_else(|e| panic!("{overlay}: parley-{}: {e}", component.name));
        // Replicas of a stateful service act as one only through Redis.
        let shared = match component.name.as_str() {
            "auth" => Some(config.auth.backend),
            "ai" => Some(config.ai.backend),
            "presence" => Some(config.presence.backend),
            _ => None,
        };
        assert!(
            shared.is_none_or(|backend| backend == Backend::Redis),
            "{overlay}: parley-{} must keep its state in Redis",
            component.name
        );
        let listen = listen_port(&config, &component.name);
        assert!(
            listen.ip().is_unspecified(),
            "{overlay}: {} must listen on 0.0.0.0",
            component.name
        );
        assert_eq!(
            listen.port(),
            component.container_port,
            "{}",
            component.name
        );
        let drain_ms = component.pre_stop_s * 1000 + config.edge.shutdown_grace_ms;
        assert!(
            component.grace_s * 1000 > drain_ms,
            "{overlay}: {}: terminationGracePeriodSeconds must exceed preStop + drain",
            component.name
        );
        for url in [
            &config.services.auth_url,
            &config.services.chat_url,
            &config.services.ai_url,
            &config.services.presence_url,
        ] {
            let host = url
                .trim_start_matches("http://")
                .split(':')
                .next()
                .expect("host");
            let headless = docs.iter().any(|d| {
                str_at(d, &["kind"]) == Some("Service")
                    && str_at(d, &["metadata", "name"]) == Some(host)
                    && str_at(d, &["spec", "clusterIP"]) == Some("None")
            });
            assert!(headless, "{overlay}: {url} is not a headless Service");
        }
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn the_dev_overlay_configures_every_component_validly() {
    if !enabled() {
        return;
    }
    check_overlay("dev");
}

#[test]
fn the_production_overlay_configures_every_component_validly() {
    if !enabled() {
        return;
    }
    check_overlay("production");
}

#[test]
fn the_production_overlay_refuses_a_database_without_tls() {
    if !enabled() {
        return;
    }
    let docs = render("production");
    let file = config_file("production-plain", &docs);
    let chat = components("production", &docs)
        .into_iter()
        .find(|c| c.name == "chat")
        .expect("chat");
    let mut env = chat.env;
    env.insert(
        "PARLEY_CHAT_DATABASE_URL".into(),
        "postgres://parley:pw@db.example/parley".into(),
    );
    let e = Config::load(Some(&file), env)
        .and_then(|c| c.check_components(&["chat"], true))
        .expect_err("plain text refused");
    assert!(e.to_string().contains("chat.database_url"), "{e}");
    let _ = std::fs::remove_file(file);
}
