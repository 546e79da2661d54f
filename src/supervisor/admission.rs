//! What may be started: the binary allow-list (`allowed_binaries`, checked on the path with
//! its symlinks resolved) and the environment allow-list (`[engines] env_allow`), with the
//! loader and shell hooks that are refused whatever the lists say.
//!
//! Owns: the checks that the API makes when a preload or a reload arrives and that the
//! supervisor makes again before every spawn (preload, restart, half-open trial, reload,
//! rollback), so that a narrowed configuration holds for engines already known.
//! Never: spawns, reads the configuration file, or decides what happens after a refusal (the
//! caller answers the request, or reports the start as failed to the core).

use std::path::{Component, Path, PathBuf};

use pool_core::{ErrorCode, PreparedEngine};

pub use crate::config::DEFAULT_ENV_ALLOW;

/// Variables that make a loader, a shell or an interpreter run code of the caller's choice:
/// refused in `env{}` whatever `env_allow` says. A pattern ending in `*` is a prefix.
pub const ENV_HOOKS: [&str; 20] = [
    "LD_*",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_*",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONINSPECT",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "GCONV_PATH",
];

/// A refusal: the error code and the message for the caller or the start's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `BINARY_NOT_ALLOWED` (a binary), `INVALID_REQUEST` (an environment variable) or
    /// `SPAWN_FAILED` (the user it would run as).
    pub code: ErrorCode,
    /// Names the binary or the variable and what to do.
    pub message: String,
}

/// The allow-lists, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    allowed_binaries: Vec<PathBuf>,
    env_allow: Vec<String>,
    /// Every start refused with this (a root daemon without `engine_user` nor
    /// `allow_root_engines`).
    refuse_all: Option<Refusal>,
}

fn matches(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == pattern,
    }
}

impl Admission {
    /// `allowed_binaries` (empty: any binary) and `env_allow` (patterns, see
    /// [`DEFAULT_ENV_ALLOW`]).
    pub fn new(allowed_binaries: Vec<PathBuf>, env_allow: Vec<String>) -> Admission {
        Admission {
            allowed_binaries,
            env_allow,
            refuse_all: None,
        }
    }

    /// The same lists, refusing every start: the daemon runs as root with no `engine_user`
    /// and `allow_root_engines` is false.
    pub fn refusing_root_engines(self) -> Admission {
        Admission {
            refuse_all: Some(Refusal {
                code: ErrorCode::SpawnFailed,
                message: "the pool manager runs as root and no engine_user is set, so the \
                          engine would run as root: set engine_user to the user engines run \
                          as (or allow_root_engines = true to accept root engines)"
                    .into(),
            }),
            ..self
        }
    }

    /// Any binary, the default environment allow-list (tests, `demo`).
    pub fn permissive() -> Admission {
        Admission::new(
            Vec::new(),
            DEFAULT_ENV_ALLOW.iter().map(|p| p.to_string()).collect(),
        )
    }

    /// Whether `allowed_binaries` is empty (any binary may be started).
    pub fn any_binary(&self) -> bool {
        self.allowed_binaries.is_empty()
    }

    /// Before a spawn: the refusal of every start (when set), then [`Self::check_request`].
    pub fn check(&self, engine: &PreparedEngine) -> Result<(), Refusal> {
        if let Some(refusal) = &self.refuse_all {
            return Err(refusal.clone());
        }
        self.check_request(engine)
    }

    /// When a request brings an engine: the binary, then the environment.
    pub fn check_request(&self, engine: &PreparedEngine) -> Result<(), Refusal> {
        self.check_binary(&engine.binary_path)?;
        self.check_env(engine.env.keys().map(String::as_str))
    }

    /// `Err(BINARY_NOT_ALLOWED)` unless `binary`, with its symlinks resolved, is under an
    /// entry of `allowed_binaries` (itself resolved). Reads the file system.
    pub fn check_binary(&self, binary: &str) -> Result<(), Refusal> {
        if self.allowed_binaries.is_empty() {
            return Ok(());
        }
        let refuse = |why: String| Refusal {
            code: ErrorCode::BinaryNotAllowed,
            message: format!(
                "binary_path '{}' {why}; allowed_binaries: {}. Add it to allowed_binaries in the \
                 config or use an allowed engine",
                escape(binary),
                self.allowed_list()
            ),
        };
        let path = Path::new(binary);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(refuse("must be an absolute path without '..'".into()));
        }
        let resolved =
            std::fs::canonicalize(path).map_err(|e| refuse(format!("cannot be resolved ({e})")))?;
        let allowed = self.allowed_binaries.iter().any(|entry| {
            let entry = std::fs::canonicalize(entry).unwrap_or_else(|_| entry.clone());
            resolved.starts_with(&entry)
        });
        if allowed {
            Ok(())
        } else if resolved != path {
            Err(refuse(format!(
                "resolves to '{}', which is not under allowed_binaries",
                resolved.display()
            )))
        } else {
            Err(refuse("is not under allowed_binaries".into()))
        }
    }

    /// `Err(INVALID_REQUEST)` naming the first key of `keys` that is a loader or shell hook
    /// ([`ENV_HOOKS`]) or that no pattern of `env_allow` matches.
    pub fn check_env<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Result<(), Refusal> {
        for key in keys {
            if ENV_HOOKS.iter().any(|hook| matches(hook, key)) {
                return Err(Refusal {
                    code: ErrorCode::InvalidRequest,
                    message: format!(
                        "prepared.env key '{}' is refused: it makes a loader, shell or \
                         interpreter run code of the caller's choice; set it in a wrapper the \
                         operator controls if the engine needs it",
                        escape(key)
                    ),
                });
            }
            if !self.env_allow.iter().any(|pattern| matches(pattern, key)) {
                return Err(Refusal {
                    code: ErrorCode::InvalidRequest,
                    message: format!(
                        "prepared.env key '{}' is not allowed by [engines] env_allow ({}); add \
                         it there if engines need it",
                        escape(key),
                        self.env_allow.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    fn allowed_list(&self) -> String {
        self.allowed_binaries
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`...): what the daemon writes to
/// a log line or an error when the text comes from a caller.
pub fn escape(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(allowed: &[&Path]) -> Admission {
        Admission::new(
            allowed.iter().map(|p| p.to_path_buf()).collect(),
            DEFAULT_ENV_ALLOW.iter().map(|p| p.to_string()).collect(),
        )
    }

    #[test]
    fn hooks_are_refused_whatever_env_allow_says() {
        let open = Admission::new(Vec::new(), vec!["*".into()]);
        for key in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "ENV",
            "PYTHONPATH",
        ] {
            let refusal = open.check_env([key]).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::InvalidRequest);
            assert!(refusal.message.contains(key), "{refusal:?}");
        }
        assert!(open.check_env(["ENVIRONMENT_NAME"]).is_ok());
    }

    #[test]
    fn only_listed_variables_pass() {
        let a = admission(&[]);
        assert!(a
            .check_env(["CUDA_VISIBLE_DEVICES", "HF_HOME", "TZ", "LC_ALL"])
            .is_ok());
        let refusal = a.check_env(["PATH"]).unwrap_err();
        assert!(refusal.message.contains("'PATH'") && refusal.message.contains("env_allow"));
        assert!(a.check_env(["TZX"]).is_err());
    }

    #[test]
    fn a_symlink_out_of_an_allowed_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("engines");
        std::fs::create_dir(&allowed).unwrap();
        let real = allowed.join("engine");
        std::fs::write(&real, b"#!/bin/sh\n").unwrap();
        let escape_link = allowed.join("sh");
        std::os::unix::fs::symlink("/bin/sh", &escape_link).unwrap();
        let inner_link = allowed.join("engine-link");
        std::os::unix::fs::symlink(&real, &inner_link).unwrap();
        let a = admission(&[&allowed]);
        assert!(a.check_binary(real.to_str().unwrap()).is_ok());
        assert!(a.check_binary(inner_link.to_str().unwrap()).is_ok());
        let refusal = a.check_binary(escape_link.to_str().unwrap()).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::BinaryNotAllowed);
        assert!(refusal.message.contains("resolves to"), "{refusal:?}");
        assert!(a.check_binary("/bin/sh").is_err());
        assert!(a.check_binary("relative/engine").is_err());
        let missing = allowed.join("missing");
        assert!(a.check_binary(missing.to_str().unwrap()).is_err());
    }

    #[test]
    fn escape_leaves_no_raw_control_character() {
        assert_eq!(escape("plain --flag"), "plain --flag");
        let escaped = escape("x\nid > FILE\n#");
        assert!(!escaped.contains('\n'));
        assert_eq!(escaped, "x\\nid > FILE\\n#");
    }
}
