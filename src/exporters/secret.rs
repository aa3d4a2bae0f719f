//! A password of an export (MQTT, Kafka): `password` in the config or `password_env`, the
//! name of an environment variable read when connecting (under systemd: set in
//! /etc/default/streamgate). Never printed, never logged.

use crate::config::Errors;

/// A secret from the config; never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    /// Read from this environment variable when connecting.
    Env(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret(***)"),
            Secret::Env(name) => write!(f, "Secret(env {name})"),
        }
    }
}

impl Secret {
    /// `password` / `password_env` of the export at `path`: one of them, with a `username`.
    pub fn validate(
        path: &str,
        password: Option<&String>,
        password_env: Option<&String>,
        username: Option<&String>,
        errs: &mut Errors,
    ) -> Option<Secret> {
        let secret = match (password, password_env) {
            (Some(_), Some(_)) => {
                errs.push(
                    format!("{path}.password_env"),
                    "set either password or password_env, not both",
                );
                None
            }
            (Some(p), None) => Some(Secret::Value(p.clone())),
            (None, Some(e)) if e.is_empty() => {
                errs.push(format!("{path}.password_env"), "must not be empty");
                None
            }
            (None, Some(e)) => Some(Secret::Env(e.clone())),
            (None, None) => None,
        };
        if secret.is_some() && username.is_none() {
            errs.push(
                format!("{path}.username"),
                "is required when a password is set",
            );
        }
        secret
    }

    /// The password; `Err(variable)` when `password_env` names a variable that is not set.
    pub fn reveal(&self) -> Result<String, String> {
        match self {
            Secret::Value(p) => Ok(p.clone()),
            Secret::Env(var) => std::env::var(var).map_err(|_| var.clone()),
        }
    }

    /// Whether it is written into the config file itself.
    pub fn is_inline(&self) -> bool {
        matches!(self, Secret::Value(_))
    }
}
