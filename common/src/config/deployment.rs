//! Checks that depend on which components a process runs: the service
//! credential of separate processes, and TLS to every backend the process
//! uses when `services.require_backend_tls` is on.

use super::{Backend, Config, ConfigError};

impl Config {
    /// Checks what only matters for the `components` this process runs
    /// (`split_mode`: as separate processes). The binaries call it at start;
    /// the deployment tests call it on the rendered manifests.
    pub fn check_components(
        &self,
        components: &[&str],
        split_mode: bool,
    ) -> Result<(), ConfigError> {
        if split_mode {
            self.check_credentials(components)?;
        }
        if !self.services.require_backend_tls {
            return Ok(());
        }
        for (key, url) in self.backends(components) {
            let tls = if url.starts_with("rediss://") {
                true
            } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                postgres_requires_tls(url)
            } else {
                false
            };
            if !tls {
                // The URL may hold a password: name the key only.
                return Err(ConfigError(format!(
                    "key `{key}`: services.require_backend_tls is on, so it must be rediss:// \
                     (Redis) or postgres:// with sslmode=require, verify-ca or verify-full"
                )));
            }
        }
        Ok(())
    }

    /// Each of `components` has a credential to present on its calls (its
    /// own or the shared one, not a `sha256:` digest), and each that serves
    /// accepts some caller.
    fn check_credentials(&self, components: &[&str]) -> Result<(), ConfigError> {
        use super::Presenter;
        let services = &self.services;
        if !services.per_caller() && services.credential.is_empty() {
            return Err(ConfigError::new(
                "key `services.credential` must be set (32+ bytes, the same in every component), \
                 or per-caller credentials (services.edge_credential, …), when services run as \
                 separate processes",
            ));
        }
        for component in components {
            let presenter = match *component {
                "edge" => Some(Presenter::Edge),
                "ai" => Some(Presenter::Ai),
                "presence" => Some(Presenter::Presence),
                "chat" => Some(Presenter::Chat),
                _ => None,
            };
            if let Some(presenter) = presenter {
                let (key, secret) = services.presented(presenter);
                if secret.is_empty() {
                    return Err(ConfigError::new(format!(
                        "key `services.{component}_credential` (or the shared services.credential) \
                         must be set: the {component} component presents it on its calls"
                    )));
                }
                if secret.expose().starts_with("sha256:") {
                    return Err(ConfigError::new(format!(
                        "key `{key}`: the {component} component presents it, so it must be the \
                         credential itself, not its sha256 digest"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The database and Redis URLs `components` connect to, by key.
    fn backends(&self, components: &[&str]) -> Vec<(&'static str, &str)> {
        let mut urls = Vec::new();
        if self.bus.backend == Backend::Redis {
            urls.push(("bus.redis_url", self.bus.redis_url.as_str()));
        }
        for component in components {
            match *component {
                "chat" => urls.push(("chat.database_url", self.chat.database_url.as_str())),
                "auth" if self.auth.backend == Backend::Redis => {
                    urls.push(("auth.redis_url", self.auth.redis_url.as_str()));
                }
                "ai" if self.ai.backend == Backend::Redis => {
                    urls.push(("ai.redis_url", self.ai.redis_url.as_str()));
                }
                "presence" if self.presence.backend == Backend::Redis => {
                    urls.push(("presence.redis_url", self.presence.redis_url.as_str()));
                }
                "edge" if !self.edge.rate_limit_redis_url.is_empty() => urls.push((
                    "edge.rate_limit_redis_url",
                    self.edge.rate_limit_redis_url.as_str(),
                )),
                _ => {}
            }
        }
        urls
    }
}

/// Whether a Postgres URL's `sslmode` makes the client refuse plain text.
fn postgres_requires_tls(url: &str) -> bool {
    let Some((_, query)) = url.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| {
        matches!(
            pair.split_once('='),
            Some(("sslmode", "require" | "verify-ca" | "verify-full"))
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load;

    const CREDENTIAL: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn separate_processes_need_the_credential() {
        let c = load(&[]).expect("valid");
        let e = c
            .check_components(&["chat"], true)
            .expect_err("no credential");
        assert!(e.to_string().contains("services.credential"), "{e}");
        c.check_components(&["chat"], false).expect("one process");
    }

    #[test]
    fn per_caller_credentials_must_be_presentable_by_their_component() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let c = load(&[
            ("PARLEY_SERVICES_EDGE_CREDENTIAL", CREDENTIAL),
            ("PARLEY_SERVICES_AI_CREDENTIAL", &digest),
        ])
        .expect("valid");
        c.check_components(&["edge"], true)
            .expect("the edge presents its own");
        c.check_components(&["auth"], true)
            .expect("auth only checks");
        let e = c.check_components(&["ai"], true).expect_err("a digest");
        assert!(e.to_string().contains("services.ai_credential"), "{e}");
        let e = c
            .check_components(&["chat"], true)
            .expect_err("nothing to present");
        assert!(e.to_string().contains("services.chat_credential"), "{e}");
    }

    #[test]
    fn required_tls_names_the_plain_text_backend_and_hides_the_url() {
        let c = load(&[
            ("PARLEY_SERVICES_CREDENTIAL", CREDENTIAL),
            ("PARLEY_SERVICES_REQUIRE_BACKEND_TLS", "true"),
            ("PARLEY_BUS_BACKEND", "redis"),
            ("PARLEY_BUS_SIGNING_KEY", CREDENTIAL),
            (
                "PARLEY_BUS_REDIS_URL",
                "rediss://u:hunter2@redis.example:6380",
            ),
            (
                "PARLEY_CHAT_DATABASE_URL",
                "postgres://u:hunter2@db.example/parley?sslmode=prefer",
            ),
        ])
        .expect("valid");
        c.check_components(&["edge", "ai"], true)
            .expect("the bus uses TLS");
        let e = c
            .check_components(&["chat"], true)
            .expect_err("sslmode=prefer");
        assert!(e.to_string().contains("chat.database_url"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "secret leaked: {e}");
    }

    #[test]
    fn required_tls_accepts_verified_postgres_and_rediss() {
        let c = load(&[
            ("PARLEY_SERVICES_CREDENTIAL", CREDENTIAL),
            ("PARLEY_SERVICES_REQUIRE_BACKEND_TLS", "true"),
            ("PARLEY_PRESENCE_BACKEND", "redis"),
            ("PARLEY_PRESENCE_REDIS_URL", "redis://redis.example:6379"),
            ("PARLEY_AI_BACKEND", "redis"),
            ("PARLEY_AI_REDIS_URL", "redis://redis.example:6379"),
            (
                "PARLEY_CHAT_DATABASE_URL",
                "postgres://db.example/parley?sslrootcert=/ca.crt&sslmode=verify-full",
            ),
        ])
        .expect("valid");
        c.check_components(&["chat"], true).expect("verify-full");
        let e = c
            .check_components(&["presence"], true)
            .expect_err("redis:// is plain text");
        assert!(e.to_string().contains("presence.redis_url"), "{e}");
        let e = c
            .check_components(&["ai"], true)
            .expect_err("redis:// is plain text");
        assert!(e.to_string().contains("ai.redis_url"), "{e}");
    }
}
