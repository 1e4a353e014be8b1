//! Local builders for the embedded default: `cargo run --release` starts the backend and,
//! in the same process, builders on this machine whose keys are generated and admitted
//! automatically, so a job submitted right after runs with no other step.

use std::path::{Path, PathBuf};

use anyhow::Context;
use buildfleet_builder::{identity, BuilderConfig};
use buildfleet_protocol::signing;

use crate::server::RunningServer;
use crate::store::{NewBuilder, Store};

/// Where local builder `index` keeps its key and work directory.
fn builder_dir(data_dir: &Path, index: u32) -> PathBuf {
    data_dir
        .join("local-builders")
        .join(format!("local-{index}"))
}

/// Generates the key on first use and admits it; later starts reuse both.
fn ensure_admitted(store: &Store, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_path = dir.join("id_ed25519");
    if !key_path.exists() {
        identity::keygen(&key_path, name)?;
    }
    let public_text = std::fs::read_to_string(key_path.with_extension("pub"))
        .with_context(|| format!("reading {}.pub", key_path.display()))?;
    let key = signing::parse_public_key(&public_text)?;
    let fingerprint = signing::fingerprint(&key).to_string();
    if store.builder_by_fingerprint(&fingerprint)?.is_none() {
        store.admit_builder(NewBuilder {
            name: name.to_owned(),
            public_key: key.to_openssh()?,
            fingerprint,
            labels: [("local".to_owned(), "true".to_owned())].into(),
        })?;
        tracing::info!(builder = name, "admitted local builder");
    }
    Ok(key_path)
}

/// Starts `count` builders in this process against `server`.
pub async fn start_builders(
    server: &RunningServer,
    data_dir: &Path,
    count: u32,
    tls_cert: Option<&Path>,
) -> anyhow::Result<Vec<buildfleet_builder::Builder>> {
    let mut addr = server.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if tls_cert.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{addr}");
    let mut builders = Vec::new();
    for index in 1..=count {
        let name = format!("local-{index}");
        let dir = builder_dir(data_dir, index);
        let store = server.store.clone();
        let (key_dir, key_name) = (dir.clone(), name.clone());
        let key_path =
            tokio::task::spawn_blocking(move || ensure_admitted(&store, &key_dir, &key_name))
                .await??;
        let mut config = BuilderConfig::new(&url, key_path, &name, dir.join("work"))?;
        config.ca_cert = tls_cert.map(Path::to_path_buf);
        builders.push(buildfleet_builder::start(config).await?);
    }
    Ok(builders)
}
