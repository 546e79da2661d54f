//! Access to a NATS server that asks for it: a token (`nats-server --auth`) and mutual TLS (a
//! CA, a server certificate for 127.0.0.1 and a client certificate, made by `openssl`). The
//! daemon publishes with `[cluster] token_file` / `tls_*`, the commands read with
//! `--token-file` / `--tls-*`, and without them the command fails, saying which flags to check.
//!
//! Needs `nats-server` and `openssl` (Debian packages; `.ci/run` installs them): fails under
//! `CI=true` without them, and is skipped elsewhere, saying so.

#[path = "support/daemon_harness.rs"]
mod harness;
#[path = "support/nats.rs"]
mod nats;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{engine_sim_preload, Harness};

const BIN: &str = env!("CARGO_BIN_EXE_pool-managerd");
const WAIT: Duration = Duration::from_secs(30);

/// Waits until NATS acknowledged the journal's last event.
async fn published_through_the_end(h: &Harness) {
    let daemon = h.daemon.as_ref().unwrap();
    let last = daemon.handle().journal().last_seq();
    let mut published = daemon.published().expect("a publisher");
    tokio::time::timeout(WAIT, published.wait_for(|seq| *seq >= last))
        .await
        .unwrap_or_else(|_| panic!("seq {last} was not published within {WAIT:?}"))
        .unwrap();
}

/// `pool-managerd cluster events --nats URL --json` with `flags`: (success, stdout, stderr).
fn events(url: &str, flags: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["cluster", "events", "--json", "--nats", url])
        .args(flags)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// A daemon publishing to `url` with `tune`'s access, with one pool, published through.
async fn publishing(url: &str, tune: impl FnOnce(&mut pool_managerd::config::Config)) -> Harness {
    let h = Harness::start_with(|config| {
        config.cluster.nats_url = url.to_string();
        config.cluster.node_id = "n1".to_string();
        tune(config);
    })
    .await;
    let body = engine_sim_preload("p", None, &[]);
    assert_eq!(h.post("/v2/pools/p/preload", body).await.0, 200);
    published_through_the_end(&h).await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_read_from_its_file_by_the_daemon_and_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = nats::server_with(dir.path(), &["--auth", "s3cret-token"]) else {
        return;
    };
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let token_path = token.display().to_string();
    let h = publishing(&server.url(), |config| {
        config.cluster.token_file = token_path.clone();
    })
    .await;
    let (ok, out, err) = events(&server.url(), &["--token-file", &token_path]);
    assert!(ok, "{err}");
    let journal = h.daemon.as_ref().unwrap().handle().journal().last_seq();
    assert_eq!(out.lines().count() as u64, journal, "{out}");
    let (ok, _, err) = events(&server.url(), &[]);
    assert!(!ok);
    assert!(err.contains("--token-file"), "{err}");
    h.stop().await;
}

/// `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`; `false` when
/// skipped (no openssl outside CI).
fn certificates(dir: &Path) -> bool {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is required under CI=true"
        );
        eprintln!("skipped: openssl is not installed");
        return false;
    }
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=test-ca"];
    ca.extend(key);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "n1")] {
        let subject = format!("/CN={cn}");
        let (csr, keyfile, ext) = (
            format!("{name}.csr"),
            format!("{name}.key"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-new", "-subj", &subject];
        req.extend(key);
        req.extend(["-keyout", &keyfile, "-out", &csr]);
        openssl(dir, &req);
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_used_by_the_daemon_and_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    if !nats::require() || !certificates(dir.path()) {
        return;
    }
    let file = |name: &str| dir.path().join(name).display().to_string();
    let config = dir.path().join("tls.conf");
    std::fs::write(
        &config,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            file("server.pem"),
            file("server.key"),
            file("ca.pem")
        ),
    )
    .unwrap();
    let server = nats::server_with(dir.path(), &["-c", &config.display().to_string()]).unwrap();
    let url = format!("tls://127.0.0.1:{}", server.port);
    let h = publishing(&url, |config| {
        config.cluster.tls_ca_file = file("ca.pem");
        config.cluster.tls_cert_file = file("client.pem");
        config.cluster.tls_key_file = file("client.key");
    })
    .await;
    let flags = [
        "--tls-ca",
        &file("ca.pem"),
        "--tls-cert",
        &file("client.pem"),
        "--tls-key",
        &file("client.key"),
    ];
    let (ok, out, err) = events(&url, &flags);
    assert!(ok, "{err}");
    let journal = h.daemon.as_ref().unwrap().handle().journal().last_seq();
    assert_eq!(out.lines().count() as u64, journal, "{out}");
    // The server asks for a client certificate: the CA alone is not enough.
    let (ok, _, err) = events(&url, &["--tls-ca", &file("ca.pem")]);
    assert!(!ok);
    assert!(err.contains("--tls-"), "{err}");
    h.stop().await;
}
