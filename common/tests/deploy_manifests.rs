//! The Kubernetes manifests and the code agree: every overlay under
//! deploy/k8s renders with `kubectl kustomize`, and each Deployment's
//! rendered config file and environment pass the binary's own config
//! validation, and the services whose replicas share state (auth, ai,
//! presence) keep it in Redis. Secrets reach Parley only as files (Secret
//! volumes named by `PARLEY_*_FILE` variables, never `secretKeyRef`
//! variables); the test mounts each Secret volume in a temporary directory,
//! holding samples of the shape deploy/README.md asks for (a real CA
//! certificate for `parley-backend-ca`), and points the paths there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::config::{Backend, Config};
use common::testing::tls::TestCerts;
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

/// A value of the shape each Secret key must hold in `overlay`; `certs`
/// gives the CA certificate.
fn sample_secret(overlay: &str, secret: &str, key: &str, certs: &TestCerts) -> String {
    let production = overlay == "production";
    if secret == "parley-backend-ca" {
        assert_eq!(key, "ca.crt", "parley-backend-ca holds ca.crt only");
        return std::fs::read_to_string(certs.ca()).expect("test CA");
    }
    assert_eq!(
        secret, "parley-secrets",
        "a Secret deploy/README.md does not name"
    );
    // Each caller's credential differs; a digest is `sha256:` and the hex
    // SHA-256 of the credential it checks.
    let credential = |caller: &str| format!("{caller}-credential-0123456789abcdef0123456789");
    if let Some(caller) = key.strip_suffix("-credential-sha256") {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(credential(caller).as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        return format!("sha256:{hex}\n");
    }
    if let Some(caller) = key.strip_suffix("-credential") {
        return format!("{}\n", credential(caller));
    }
    // Files end with a newline, as `echo` or an editor leaves them.
    let value = match key {
        "bus-signing-key" | "auth-hs256-secret" | "postgres-password" | "redis-password" => {
            "0123456789abcdef0123456789abcdef"
        }
        "ai-api-key" => "sk-sample",
        "database-url" if production => {
            "postgres://parley:pw@db.example:5432/parley\
             ?sslmode=verify-full&sslrootcert=/etc/parley/tls/ca.crt"
        }
        "database-url" => "postgres://parley:pw@postgres:5432/parley",
        "redis-url" if production => "rediss://parley:pw@redis.example:6380",
        "redis-url" => "redis://:pw@redis:6379",
        other => panic!("secret key {other} has no sample: document it and add one here"),
    };
    format!("{value}\n")
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
    /// Secret volumes: mount path, then each file's Secret and key.
    secret_mounts: Vec<(String, Vec<SecretFile>)>,
    config_file: String,
    container_port: u16,
    grace_s: u64,
    pre_stop_s: u64,
}

/// One file of a mounted Secret.
#[derive(Clone)]
struct SecretFile {
    secret: String,
    key: String,
    /// Its path under the mount.
    path: String,
}

/// The files a Secret volume source (`secret:` or one of `projected:`'s
/// `sources`) puts in the volume: its `items`, or every key the README
/// documents for it when it lists none.
fn secret_files(secret: &str, source: &Value) -> Vec<SecretFile> {
    let file = |key: &str, path: &str| SecretFile {
        secret: secret.to_string(),
        key: key.to_string(),
        path: path.to_string(),
    };
    match source["items"].as_sequence() {
        Some(items) => items
            .iter()
            .map(|item| {
                file(
                    str_at(item, &["key"]).expect("key"),
                    str_at(item, &["path"]).expect("path"),
                )
            })
            .collect(),
        None if secret == "parley-backend-ca" => vec![file("ca.crt", "ca.crt")],
        None => panic!("Secret volume of {secret} without items: list the keys it needs"),
    }
}

/// The Secret volumes of a pod `spec`'s first container, by mount path.
fn secret_mounts(spec: &Value) -> Vec<(String, Vec<SecretFile>)> {
    let volumes = spec["volumes"].as_sequence().expect("volumes");
    let mounts = spec["containers"][0]["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts");
    mounts
        .iter()
        .filter_map(|mount| {
            let name = str_at(mount, &["name"]).expect("mount name");
            let volume = volumes
                .iter()
                .find(|v| str_at(v, &["name"]) == Some(name))
                .expect("a mounted volume exists");
            let files: Vec<SecretFile> = if let Some(secret) = volume.get("secret") {
                let secret_name = str_at(secret, &["secretName"]).expect("secretName");
                secret_files(secret_name, secret)
            } else if let Some(projected) = volume.get("projected") {
                projected["sources"]
                    .as_sequence()
                    .expect("sources")
                    .iter()
                    .flat_map(|source| {
                        let secret = source.get("secret").expect("only Secret sources");
                        secret_files(str_at(secret, &["name"]).expect("name"), secret)
                    })
                    .collect()
            } else {
                return None;
            };
            let path = str_at(mount, &["mountPath"]).expect("mountPath");
            Some((path.to_string(), files))
        })
        .collect()
}

fn components(docs: &[Value]) -> Vec<Component> {
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
                // checkov's CKV_K8S_35: secrets as files, not variables.
                let value = str_at(var, &["value"])
                    .unwrap_or_else(|| panic!("parley-{name}: {key} must be a plain value"));
                env.insert(key, value.to_string());
            }
            Component {
                name: name.to_string(),
                env,
                secret_mounts: secret_mounts(spec),
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

/// The rendered `parley.toml` of `overlay`.
fn config_text(docs: &[Value]) -> String {
    docs.iter()
        .find(|d| {
            str_at(d, &["kind"]) == Some("ConfigMap")
                && str_at(d, &["metadata", "name"]).is_some_and(|n| n.starts_with("parley-config-"))
        })
        .and_then(|d| str_at(d, &["data", "parley.toml"]))
        .expect("a hashed parley-config ConfigMap with parley.toml")
        .to_string()
}

/// One component's files as its container would see them, under a
/// temporary directory (removed on drop): the Secret volumes filled with
/// samples, and the config file with those mount paths pointing there.
struct Mounted {
    root: PathBuf,
    /// Mount paths in the container and where they are here.
    paths: Vec<(String, PathBuf)>,
    config_file: PathBuf,
}

impl Mounted {
    /// Mounts `component`'s Secret volumes; `sample` gives each file's
    /// contents from its Secret and key.
    fn new(component: &Component, toml: &str, sample: impl Fn(&str, &str) -> String) -> Self {
        let root = std::env::temp_dir().join(common::ids::new_id("parley-deploy"));
        let mut paths = Vec::new();
        for (i, (mount, files)) in component.secret_mounts.iter().enumerate() {
            let dir = root.join(format!("mount-{i}"));
            std::fs::create_dir_all(&dir).expect("mount dir");
            for file in files {
                std::fs::write(dir.join(&file.path), sample(&file.secret, &file.key))
                    .expect("write sample");
            }
            paths.push((mount.clone(), dir));
        }
        let mut mounted = Self {
            root,
            paths,
            config_file: PathBuf::new(),
        };
        mounted.config_file = mounted.root.join("parley.toml");
        std::fs::write(&mounted.config_file, mounted.rewrite(toml)).expect("write config");
        mounted
    }

    /// `text` with every Secret mount path replaced by where it is here.
    fn rewrite(&self, text: &str) -> String {
        self.paths
            .iter()
            .fold(text.to_string(), |text, (mount, dir)| {
                text.replace(&format!("{mount}/"), &format!("{}/", dir.display()))
            })
    }

    /// The component's environment with the mount paths rewritten.
    fn env(&self, component: &Component) -> BTreeMap<String, String> {
        component
            .env
            .iter()
            .map(|(k, v)| (k.clone(), self.rewrite(v)))
            .collect()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
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
    let toml = config_text(&docs);
    let certs = TestCerts::new("parley-deploy-ca");
    let components = components(&docs);
    let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 5, "{overlay}: five components, got {names:?}");
    for component in &components {
        assert_eq!(component.config_file, "/etc/parley/parley.toml");
        let mounted = Mounted::new(component, &toml, |secret, key| {
            sample_secret(overlay, secret, key, &certs)
        });
        let config = Config::load(Some(&mounted.config_file), mounted.env(component))
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
    let toml = config_text(&docs);
    let certs = TestCerts::new("parley-deploy-ca");
    let chat = components(&docs)
        .into_iter()
        .find(|c| c.name == "chat")
        .expect("chat");
    let mounted = Mounted::new(&chat, &toml, |secret, key| match key {
        "database-url" => "postgres://parley:pw@db.example/parley\n".into(),
        _ => sample_secret("production", secret, key, &certs),
    });
    let e = Config::load(Some(&mounted.config_file), mounted.env(&chat))
        .and_then(|c| c.check_components(&["chat"], true))
        .expect_err("plain text refused");
    assert!(e.to_string().contains("key `chat.database_url`"), "{e}");
}

#[test]
fn a_missing_secret_file_stops_the_component_naming_the_key() {
    if !enabled() {
        return;
    }
    let docs = render("dev");
    let edge = components(&docs)
        .into_iter()
        .find(|c| c.name == "edge")
        .expect("edge");
    // The Secret is not mounted: the paths lead nowhere.
    let e = Config::load(None, edge.env.clone()).expect_err("no secret files");
    assert!(e.to_string().contains("_file"), "{e}");
}
