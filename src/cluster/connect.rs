//! How this node and the `cluster` commands reach NATS: the server list, the credentials
//! (a `.creds` file or a token file) and TLS (a CA that verifies the servers, and a client
//! certificate for mutual TLS), the same for the daemon and for every command.
//!
//! Owns: turning `[cluster]`'s access keys (or the commands' flags) into the client's options,
//! and the errors that name the file or URL at fault. Never: holds a secret in the config (the
//! secrets stay in their files, read at connect), or waits without a bound for a first
//! connection from a command (the daemon alone waits for the server to come).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ClusterSettings;

/// How long a command waits for its connection.
pub const COMMAND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a command tries a JetStream call before its error is the answer: a cluster
/// that lost a server answers nothing for a stream or bucket whose leader it was until it
/// elected another (seconds; about 6 s on a loaded 2-core machine).
pub const COMMAND_TRIES: u32 = 5;
/// The pause between two tries.
pub const COMMAND_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// `call` until it succeeds, at most [`COMMAND_TRIES`] times, [`COMMAND_RETRY_PAUSE`] apart
/// (each call bounds itself); the last error otherwise.
pub async fn patiently<T, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut tries = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(why) if tries >= COMMAND_TRIES => return Err(why),
            Err(why) => tracing::debug!("{why}; trying again"),
        }
        tries += 1;
        tokio::time::sleep(COMMAND_RETRY_PAUSE).await;
    }
}

/// The credentials and TLS files (none: a plain connection without credentials).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// A NATS credentials file (user JWT + NKey seed).
    pub creds_file: Option<PathBuf>,
    /// A file holding an authorization token.
    pub token_file: Option<PathBuf>,
    /// CA certificates that verify the servers (TLS is then required).
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and its key, for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

fn path_of(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

impl Access {
    /// `[cluster]`'s access keys.
    pub fn of(settings: &ClusterSettings) -> Access {
        let tls_client = path_of(&settings.tls_cert_file).zip(path_of(&settings.tls_key_file));
        Access {
            creds_file: path_of(&settings.creds_file),
            token_file: path_of(&settings.token_file),
            tls_ca_file: path_of(&settings.tls_ca_file),
            tls_client,
        }
    }

    /// The client's options with these credentials and TLS settings; an unreadable file is
    /// an error naming it.
    pub async fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut options = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| {
                    format!(
                        "cannot use the NATS credentials file {}: {e} (cluster.creds_file / \
                         --creds: a file as `nsc generate creds` writes it)",
                        path.display()
                    )
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read the NATS token file {}: {e} (cluster.token_file / --token-file)",
                    path.display()
                )
            })?;
            options = options.token(token.trim().to_string());
        }
        if let Some(ca) = &self.tls_ca_file {
            readable(ca, "cluster.tls_ca_file / --tls-ca")?;
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            readable(cert, "cluster.tls_cert_file / --tls-cert")?;
            readable(key, "cluster.tls_key_file / --tls-key")?;
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// Fails unless `path` can be read (the client reads TLS files only when it connects, and
/// says less about which file is wrong).
fn readable(path: &std::path::Path, key: &str) -> Result<(), String> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("cannot read {} ({key}): {e}", path.display()))
}

/// The servers of `url`: one or several `nats://HOST:PORT` (or `HOST:PORT`), comma-separated;
/// an unparsable one is an error naming it.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|one| !one.is_empty())
        .map(|one| {
            one.parse()
                .map_err(|e| format!("{one:?} is not a NATS server address: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err(format!("{url:?} names no NATS server"));
    }
    Ok(addrs)
}

/// A command's connection to `url` (one or several `nats://HOST:PORT`, comma-separated),
/// within [`COMMAND_CONNECT_TIMEOUT`].
pub async fn connect_command(url: &str, access: &Access) -> Result<async_nats::Client, String> {
    let options = access
        .options()
        .await?
        .connection_timeout(COMMAND_CONNECT_TIMEOUT)
        .name("pool-managerd cluster command");
    let addrs = server_addrs(url)?;
    match tokio::time::timeout(COMMAND_CONNECT_TIMEOUT, options.connect(addrs)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!(
            "cannot connect to NATS at {url}: {e} (is a `nats-server -js` listening there, and \
             do --creds/--token-file/--tls-* match its settings?)"
        )),
        Err(_) => Err(format!(
            "no connection to NATS at {url} within {}s (is a `nats-server -js` listening there?)",
            COMMAND_CONNECT_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_split_on_commas_and_a_bad_one_is_named() {
        let addrs = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,").unwrap();
        assert_eq!(addrs.len(), 2);
        let why = server_addrs("nats://127.0.0.1:4222,http://[x").unwrap_err();
        assert!(why.contains("http://[x"), "{why}");
        assert!(server_addrs(" , ").is_err());
    }
}
