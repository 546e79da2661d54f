//! The flags every command that reads NATS takes (`cluster status/events`, `replay --nats`,
//! `journal restore --nats`): the credentials and TLS files, as `[cluster]`'s access keys.

use std::path::PathBuf;

use crate::cluster::connect::Access;

/// The access flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AccessArgs {
    /// A NATS credentials file (user JWT + NKey seed).
    #[arg(long, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// A file holding an authorization token.
    #[arg(long, value_name = "FILE", conflicts_with = "creds")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) that verify the servers; TLS is then required.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl AccessArgs {
    /// The access these flags describe.
    pub fn access(&self) -> Access {
        Access {
            creds_file: self.creds.clone(),
            token_file: self.token_file.clone(),
            tls_ca_file: self.tls_ca.clone(),
            tls_client: self.tls_cert.clone().zip(self.tls_key.clone()),
        }
    }
}
