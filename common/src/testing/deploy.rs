//! The Kubernetes manifests as the tests read them: an overlay of
//! deploy/k8s rendered by `kubectl kustomize`, and each Parley Deployment's
//! command, environment, mounts, ports and roll-out timings, so a test can
//! start the binaries exactly as a cluster would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

/// Whether manifest tests run: where `kubectl` is installed, or always when
/// `PARLEY_TEST_DEPLOY` is set (CI sets it; then a missing kubectl fails).
pub fn enabled() -> bool {
    if std::env::var_os("PARLEY_TEST_DEPLOY").is_some() {
        return true;
    }
    let found = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok();
    if !found {
        eprintln!("note: kubectl is not installed; skipping the manifest tests");
    }
    found
}

/// The repository's deploy/k8s folder.
pub fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// Every document one overlay renders to.
#[derive(Debug)]
pub struct Rendered {
    pub overlay: String,
    pub docs: Vec<Value>,
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    /// A key of a Secret (`optional` ones may be absent).
    Secret {
        key: String,
        optional: bool,
    },
}

/// A folder mounted into the container.
#[derive(Debug, Clone)]
pub struct Mount {
    pub path: String,
    pub source: MountSource,
}

#[derive(Debug, Clone)]
pub enum MountSource {
    /// A ConfigMap's entries, each a file.
    ConfigMap(BTreeMap<String, String>),
    /// A Secret's keys (`items` maps a key to its file name; empty means
    /// every key under its own name).
    Secret {
        name: String,
        items: Vec<(String, String)>,
    },
    /// Several sources in one folder.
    Projected(Vec<MountSource>),
    /// An empty writable folder.
    EmptyDir,
}

/// One Parley Deployment as a test starts it.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `edge`, `auth`, `chat`, `ai` or `presence`.
    pub component: String,
    /// The binary's file name (`parley-edge`).
    pub binary: String,
    pub args: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    pub mounts: Vec<Mount>,
    /// The container's first port (what the component serves).
    pub port: u16,
    /// The container port named `metrics`, if any.
    pub metrics_port: Option<u16>,
    pub replicas: u64,
    pub pre_stop_s: u64,
    pub grace_s: u64,
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

impl Rendered {
    /// Renders `deploy/k8s/overlays/<overlay>`; panics with kubectl's
    /// message when it does not render.
    pub fn overlay(overlay: &str) -> Self {
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
        let docs = serde_norway::Deserializer::from_str(&text)
            .map(|doc| serde::Deserialize::deserialize(doc).expect("yaml"))
            .collect();
        Self {
            overlay: overlay.to_string(),
            docs,
        }
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs.iter().find(|d| {
            str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name)
        })
    }

    /// Whether a Service `name` is headless (DNS answers with every ready
    /// pod's address).
    pub fn is_headless_service(&self, name: &str) -> bool {
        self.find("Service", name)
            .is_some_and(|s| str_at(s, &["spec", "clusterIP"]) == Some("None"))
    }

    /// The rendered `parley.toml` of the hashed `parley-config` ConfigMap.
    pub fn config_toml(&self) -> &str {
        self.docs
            .iter()
            .find(|d| {
                str_at(d, &["kind"]) == Some("ConfigMap")
                    && str_at(d, &["metadata", "name"])
                        .is_some_and(|n| n.starts_with("parley-config-"))
            })
            .and_then(|d| str_at(d, &["data", "parley.toml"]))
            .expect("a hashed parley-config ConfigMap with parley.toml")
    }

    /// Every Deployment that is part of Parley.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.docs
            .iter()
            .filter(|d| {
                str_at(d, &["kind"]) == Some("Deployment")
                    && str_at(d, &["metadata", "labels", "app.kubernetes.io/part-of"])
                        == Some("parley")
            })
            .map(|d| self.deployment(d))
            .collect()
    }

    fn deployment(&self, d: &Value) -> Deployment {
        let spec = &d["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let command: Vec<String> = container["command"]
            .as_sequence()
            .expect("command")
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect();
        let binary = command[0].rsplit('/').next().expect("path").to_string();
        let component = binary
            .strip_prefix("parley-")
            .expect("a parley binary")
            .to_string();
        let env = container["env"]
            .as_sequence()
            .map(|vars| {
                vars.iter()
                    .map(|var| {
                        let name = str_at(var, &["name"]).expect("name").to_string();
                        let value = match str_at(var, &["value"]) {
                            Some(v) => EnvValue::Literal(v.to_string()),
                            None => EnvValue::Secret {
                                key: str_at(var, &["valueFrom", "secretKeyRef", "key"])
                                    .expect("a value or a secret key")
                                    .to_string(),
                                optional: var["valueFrom"]["secretKeyRef"]["optional"]
                                    .as_bool()
                                    .unwrap_or(false),
                            },
                        };
                        (name, value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let volumes = spec["volumes"].as_sequence().cloned().unwrap_or_default();
        let mounts = container["volumeMounts"]
            .as_sequence()
            .map(|mounts| {
                mounts
                    .iter()
                    .map(|m| {
                        let name = str_at(m, &["name"]).expect("mount name");
                        let volume = volumes
                            .iter()
                            .find(|v| str_at(v, &["name"]) == Some(name))
                            .unwrap_or_else(|| panic!("volume {name} is declared"));
                        Mount {
                            path: str_at(m, &["mountPath"]).expect("mountPath").to_string(),
                            source: self.mount_source(volume),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ports = container["ports"].as_sequence().expect("ports");
        let port_of = |p: &Value| p["containerPort"].as_u64().expect("port") as u16;
        Deployment {
            component,
            binary,
            args: command[1..].to_vec(),
            env,
            mounts,
            port: port_of(&ports[0]),
            metrics_port: ports
                .iter()
                .find(|p| str_at(p, &["name"]) == Some("metrics"))
                .map(port_of),
            replicas: d["spec"]["replicas"].as_u64().unwrap_or(1),
            pre_stop_s: container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0),
            grace_s: spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
        }
    }

    fn mount_source(&self, volume: &Value) -> MountSource {
        if let Some(name) = str_at(volume, &["configMap", "name"]) {
            let map = self
                .find("ConfigMap", name)
                .unwrap_or_else(|| panic!("ConfigMap {name} is rendered"));
            let data = map["data"]
                .as_mapping()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().expect("key").to_string(),
                                v.as_str().expect("text").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            MountSource::ConfigMap(data)
        } else if let Some(sources) = volume["projected"]["sources"].as_sequence() {
            MountSource::Projected(
                sources
                    .iter()
                    .map(|source| match str_at(source, &["secret", "name"]) {
                        Some(name) => secret_source(name, &source["secret"]),
                        None => self.mount_source(source),
                    })
                    .collect(),
            )
        } else if let Some(name) = str_at(volume, &["secret", "secretName"]) {
            secret_source(name, &volume["secret"])
        } else {
            MountSource::EmptyDir
        }
    }
}

/// A Secret volume source: its `items`, or every key when it lists none.
fn secret_source(name: &str, secret: &Value) -> MountSource {
    let items = secret["items"]
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        str_at(i, &["key"]).expect("key").to_string(),
                        str_at(i, &["path"]).expect("path").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    MountSource::Secret {
        name: name.to_string(),
        items,
    }
}

impl Deployment {
    /// Lays the container's mounts out under `root` (a mount at `/etc/x`
    /// becomes `root/etc/x`), filling Secret volumes from `secrets`
    /// (Secret name → key → value; keys it lacks are left out, as an
    /// optional Secret key would be).
    pub fn materialize(
        &self,
        root: &Path,
        secrets: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> std::io::Result<()> {
        for mount in &self.mounts {
            let dir = self.localize_path(root, &mount.path);
            std::fs::create_dir_all(&dir)?;
            self.fill(root, &dir, &mount.source, secrets)?;
        }
        Ok(())
    }

    fn fill(
        &self,
        root: &Path,
        dir: &Path,
        source: &MountSource,
        secrets: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> std::io::Result<()> {
        match source {
            // Files of the ConfigMap name mounted paths: as here.
            MountSource::ConfigMap(files) => {
                for (name, text) in files {
                    std::fs::write(dir.join(name), self.localize_text(root, text))?;
                }
            }
            MountSource::Secret { name, items } => {
                let Some(values) = secrets.get(name) else {
                    return Ok(());
                };
                if items.is_empty() {
                    for (key, value) in values {
                        std::fs::write(dir.join(key), value)?;
                    }
                } else {
                    for (key, path) in items {
                        if let Some(value) = values.get(key) {
                            std::fs::write(dir.join(path), value)?;
                        }
                    }
                }
            }
            MountSource::Projected(sources) => {
                for source in sources {
                    self.fill(root, dir, source, secrets)?;
                }
            }
            MountSource::EmptyDir => {}
        }
        Ok(())
    }

    /// `text` with every path under a mounted ConfigMap or Secret moved
    /// under `root` (writable empty folders such as `/tmp` are left alone).
    pub fn localize_text(&self, root: &Path, text: &str) -> String {
        let mut tops: Vec<&str> = self
            .mounts
            .iter()
            .filter(|m| !matches!(m.source, MountSource::EmptyDir))
            .map(|m| m.path.as_str())
            .collect();
        // A mount inside another is moved with it.
        tops.sort();
        tops.dedup_by(|inner, outer| inner.starts_with(&format!("{outer}/")));
        tops.iter().fold(text.to_string(), |text, top| {
            text.replace(
                &format!("{top}/"),
                &format!("{}/", root.join(top.trim_start_matches('/')).display()),
            )
        })
    }

    /// `path` inside the container, as a path under `root` when a mount
    /// holds it, else unchanged.
    pub fn localize_path(&self, root: &Path, path: &str) -> PathBuf {
        let mounted = self
            .mounts
            .iter()
            .any(|m| path == m.path || path.starts_with(&format!("{}/", m.path)));
        if mounted {
            root.join(path.trim_start_matches('/'))
        } else {
            PathBuf::from(path)
        }
    }

    /// The command's arguments with mounted paths under `root`.
    pub fn localized_args(&self, root: &Path) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                if a.starts_with('/') {
                    self.localize_path(root, a).display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect()
    }

    /// The environment with Secret keys taken from `secret` (a required key
    /// it lacks panics, naming it) and mounted paths under `root`.
    pub fn localized_env(
        &self,
        root: &Path,
        secret: impl Fn(&str) -> Option<String>,
    ) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|(name, value)| {
                let value = match value {
                    EnvValue::Literal(v) => self.localize_text(root, v),
                    EnvValue::Secret { key, optional } => match secret(key) {
                        Some(v) => v,
                        None if *optional => return None,
                        None => panic!("{}: secret key {key} has no value", self.binary),
                    },
                };
                Some((name.clone(), value))
            })
            .collect()
    }
}
