//! Secrets read from files: each secret key `<key>` may instead be given as
//! `<key>_file`, naming a file that holds the value (a Kubernetes Secret
//! mounted as a volume, a Docker secret). The file is read once, at load,
//! and one trailing newline is dropped.
//!
//! Each configuration layer (the TOML file, the environment) is resolved
//! on its own, before the layers are merged: a layer that sets both
//! `<key>` and `<key>_file` is refused, and a later layer overrides an
//! earlier one whichever form either uses.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::ConfigError;

/// The secret keys that have a `_file` form, as `(section, key)`.
const SECRET_KEYS: &[(&str, &str)] = &[
    ("edge", "admin_token"),
    ("edge", "rate_limit_redis_url"),
    ("auth", "hs256_secret"),
    ("auth", "redis_url"),
    ("chat", "database_url"),
    ("ai", "api_key"),
    ("ai", "redis_url"),
    ("ai", "fallback_api_key"),
    ("presence", "redis_url"),
    ("bus", "redis_url"),
    ("bus", "signing_key"),
    ("bus", "previous_signing_key"),
    ("services", "credential"),
    ("services", "edge_credential"),
    ("services", "ai_credential"),
    ("services", "presence_credential"),
    ("services", "chat_credential"),
    ("attachments", "signing_key"),
    ("attachments", "s3_secret_access_key"),
];

/// Arrays of tables whose tables hold a secret with a `_file` form, as
/// `(section, array, key)`: `[[auth.keys]]`, `[[chat.webhooks]]` and
/// `[[services.backends]]`.
const TABLE_SECRETS: &[(&str, &str, &str)] = &[
    ("auth", "keys", "secret"),
    ("chat", "webhooks", "secret"),
    ("services", "backends", "credential"),
];

/// One configuration layer with its `_file` keys replaced by the files'
/// contents; it keeps the original layer's name for error messages.
pub(super) struct Resolved {
    metadata: Metadata,
    data: Map<Profile, Dict>,
}

impl Resolved {
    /// Reads `provider` and resolves its `_file` keys.
    pub(super) fn new(provider: &impl Provider) -> Result<Self, ConfigError> {
        let metadata = provider.metadata();
        let mut data = provider.data().map_err(super::describe)?;
        for dict in data.values_mut() {
            resolve(dict, &metadata.name)?;
        }
        Ok(Self { metadata, data })
    }
}

impl Provider for Resolved {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(self.data.clone())
    }
}

/// Replaces every `<key>_file` of `root` (one layer, one profile) with `<key>`.
fn resolve(root: &mut Dict, source: &str) -> Result<(), ConfigError> {
    for (section, key) in SECRET_KEYS {
        if let Some(Value::Dict(_, table)) = root.get_mut(*section) {
            resolve_key(table, section, key, source)?;
        }
    }
    for (section, array, key) in TABLE_SECRETS {
        let tables = match root.get_mut(*section) {
            Some(Value::Dict(_, section)) => section.get_mut(*array),
            _ => None,
        };
        if let Some(Value::Array(_, tables)) = tables {
            for (i, table) in tables.iter_mut().enumerate() {
                if let Value::Dict(_, table) = table {
                    resolve_key(table, &format!("{section}.{array}[{i}]"), key, source)?;
                }
            }
        }
    }
    Ok(())
}

/// Replaces `<key>_file` in `table` (named `at`) with `<key>`, read from the file.
fn resolve_key(table: &mut Dict, at: &str, key: &str, source: &str) -> Result<(), ConfigError> {
    let file_key = format!("{key}_file");
    let Some(path) = table.remove(&file_key) else {
        return Ok(());
    };
    if table.contains_key(key) {
        return Err(ConfigError(format!(
            "key `{at}.{file_key}` ({source}): set either {at}.{key} or {at}.{file_key}, not both"
        )));
    }
    let Some(path) = path.into_string() else {
        return Err(ConfigError(format!(
            "key `{at}.{file_key}` ({source}): must be a file path"
        )));
    };
    let value = read_secret(&path).map_err(|e| {
        ConfigError(format!(
            "key `{at}.{file_key}` ({source}): cannot read {path}: {e}"
        ))
    })?;
    table.insert(key.to_string(), Value::from(value));
    Ok(())
}

/// The file's text without its trailing newline (`\n` or `\r\n`).
fn read_secret(path: &str) -> std::io::Result<String> {
    let mut text = std::fs::read_to_string(path)?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::Config;
    use crate::config::tests::load;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    /// A temporary directory of files, removed on drop.
    struct Files(PathBuf);

    impl Files {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(crate::ids::new_id("parley-secret-files"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        fn write(&self, name: &str, contents: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, contents).expect("write");
            path.display().to_string()
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn every_secret_key_can_come_from_a_file_without_its_trailing_newline() {
        let files = Files::new();
        let key = files.write("key", &format!("{KEY}\n"));
        let windows = files.write("windows", &format!("{KEY}\r\n"));
        let url = files.write("url", "rediss://parley:pw@redis.example:6380\n");
        let database = files.write("db", "postgres://parley:pw@db.example/parley\n");
        let c = load(&[
            ("PARLEY_SERVICES_CREDENTIAL_FILE", &key),
            ("PARLEY_BUS_BACKEND", "redis"),
            ("PARLEY_BUS_SIGNING_KEY_FILE", &key),
            ("PARLEY_BUS_PREVIOUS_SIGNING_KEY_FILE", &windows),
            ("PARLEY_BUS_REDIS_URL_FILE", &url),
            ("PARLEY_AUTH_HS256_SECRET_FILE", &key),
            ("PARLEY_AUTH_REDIS_URL_FILE", &url),
            ("PARLEY_CHAT_DATABASE_URL_FILE", &database),
            ("PARLEY_AI_API_KEY_FILE", &key),
            ("PARLEY_AI_FALLBACK_API_KEY_FILE", &key),
            ("PARLEY_PRESENCE_REDIS_URL_FILE", &url),
            ("PARLEY_EDGE_RATE_LIMIT_REDIS_URL_FILE", &url),
            ("PARLEY_EDGE_ADMIN_TOKEN_FILE", &key),
        ])
        .expect("valid");
        for secret in [
            &c.services.credential,
            &c.bus.signing_key,
            &c.bus.previous_signing_key,
            &c.auth.hs256_secret,
            &c.ai.api_key,
            &c.ai.fallback_api_key,
            &c.edge.admin_token,
        ] {
            assert_eq!(secret.expose(), KEY);
        }
        for url in [
            &c.bus.redis_url,
            &c.auth.redis_url,
            &c.presence.redis_url,
            &c.edge.rate_limit_redis_url,
        ] {
            assert_eq!(url, "rediss://parley:pw@redis.example:6380");
        }
        assert_eq!(
            c.chat.database_url,
            "postgres://parley:pw@db.example/parley"
        );
    }

    #[test]
    fn the_config_file_takes_file_keys_too_including_auth_keys() {
        let files = Files::new();
        let key = files.write("key", &format!("{KEY}\n"));
        let toml = files.write(
            "parley.toml",
            &format!(
                "[bus]\nsigning_key_file = \"{key}\"\n\n[[auth.keys]]\nkid = \"a\"\n\
                 algorithms = [\"HS256\"]\nsecret_file = \"{key}\"\n\n\
                 [[chat.webhooks]]\nname = \"push\"\nurl = \"http://127.0.0.1:9/\"\n\
                 secret_file = \"{key}\"\n"
            ),
        );
        let c =
            Config::load(Some(Path::new(&toml)), Vec::<(String, String)>::new()).expect("valid");
        assert_eq!(c.bus.signing_key.expose(), KEY);
        assert_eq!(c.auth.keys[0].secret.expose(), KEY);
        assert_eq!(c.chat.webhooks[0].secret.expose(), KEY);
    }

    #[test]
    fn a_later_layer_overrides_either_form() {
        let files = Files::new();
        let key = files.write("key", KEY);
        let toml = files.write("parley.toml", "[services]\ncredential = \"short\"\n");
        let c = Config::load(
            Some(Path::new(&toml)),
            [("PARLEY_SERVICES_CREDENTIAL_FILE", key.as_str())],
        )
        .expect("the environment's file wins");
        assert_eq!(c.services.credential.expose(), KEY);
    }

    #[test]
    fn both_forms_in_one_layer_are_refused_naming_the_key() {
        let files = Files::new();
        let key = files.write("key", KEY);
        let e = load(&[
            ("PARLEY_AUTH_HS256_SECRET", KEY),
            ("PARLEY_AUTH_HS256_SECRET_FILE", &key),
        ])
        .expect_err("both");
        assert!(e.to_string().contains("auth.hs256_secret_file"), "{e}");
        assert!(!e.to_string().contains(KEY), "secret leaked: {e}");
    }

    #[test]
    fn an_unreadable_file_stops_loading_naming_the_key_not_the_value() {
        let e = load(&[("PARLEY_BUS_SIGNING_KEY_FILE", "/nonexistent/parley/key")])
            .expect_err("missing file");
        let message = e.to_string();
        assert!(message.contains("bus.signing_key_file"), "{message}");
        assert!(message.contains("/nonexistent/parley/key"), "{message}");
        let files = Files::new();
        let short = files.write("short", "hunter2\n");
        let e = load(&[("PARLEY_SERVICES_CREDENTIAL_FILE", &short)]).expect_err("too short");
        assert!(e.to_string().contains("services.credential"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "secret leaked: {e}");
    }

    #[test]
    fn keys_that_are_not_secrets_have_no_file_form() {
        let e = load(&[("PARLEY_EDGE_LISTEN_FILE", "/etc/hostname")]).expect_err("unknown");
        assert!(e.to_string().contains("listen_file"), "{e}");
    }
}
