//! The REST calls the suites make, as an operator and a submitter would.

use std::time::Duration;

use anyhow::{bail, Context as _};
use buildfleet_api::{AdmitBuilder, Builder, JobDetail, SubmitJob, UploadedSource};
use serde_json::Value;

use crate::target::Backend;

/// Source digest of the no-op jobs; simulated builders never fetch the source.
pub const NOOP_SOURCE_SHA256: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone)]
pub struct Api {
    client: awc::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(backend: &Backend) -> Api {
        Api {
            client: http_client(Duration::from_secs(120)),
            base: backend.http_url.clone(),
            token: backend.admin_token.clone(),
        }
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send_json(
        &self,
        method: awc::http::Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<Value> {
        let mut response = self
            .client
            .request(method.clone(), self.url(path))
            .bearer_auth(&self.token)
            .send_json(body)
            .await
            .map_err(|e| anyhow::anyhow!("{method} {path}: {e}"))?;
        let status = response.status();
        let bytes = response.body().limit(64 * 1024 * 1024).await?;
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut response = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
        let status = response.status();
        let bytes = response.body().limit(64 * 1024 * 1024).await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<bytes::Bytes> {
        let mut response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
        let status = response.status();
        let bytes = response.body().limit(64 * 1024 * 1024).await?;
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        Ok(bytes)
    }

    /// Admits a builder; returns its id.
    pub async fn admit_builder(&self, name: &str, public_key: &str) -> anyhow::Result<i64> {
        let body = AdmitBuilder {
            name: name.to_owned(),
            public_key: public_key.to_owned(),
            labels: Default::default(),
        };
        let builder: Builder = parse(
            self.send_json(awc::http::Method::POST, "/api/v1/builders", &body)
                .await?,
        )?;
        Ok(builder.record.id)
    }

    /// Submits a no-op job of `recipe` whose source simulated builders never fetch; returns
    /// its id.
    pub async fn submit(&self, recipe: &str) -> anyhow::Result<i64> {
        self.submit_body(&noop_job(recipe)).await
    }

    /// Submits `count` no-op jobs of `recipe` in one request (one transaction); returns their
    /// ids.
    pub async fn submit_batch(&self, recipe: &str, count: usize) -> anyhow::Result<Vec<i64>> {
        let job = noop_job(recipe);
        let jobs: Vec<buildfleet_api::Job> = parse(
            self.send_json(awc::http::Method::POST, "/api/v1/jobs", &vec![job; count])
                .await?,
        )?;
        Ok(jobs.into_iter().map(|j| j.id).collect())
    }

    pub async fn submit_body(&self, body: &SubmitJob) -> anyhow::Result<i64> {
        let job: buildfleet_api::Job = parse(
            self.send_json(awc::http::Method::POST, "/api/v1/jobs", body)
                .await?,
        )?;
        Ok(job.id)
    }

    /// `GET /api/v1/jobs/{id}`.
    pub async fn job(&self, id: i64) -> anyhow::Result<JobDetail> {
        parse(self.get(&format!("/api/v1/jobs/{id}")).await?)
    }

    /// `GET /api/v1/builders/{id}`.
    pub async fn builder(&self, id: i64) -> anyhow::Result<Builder> {
        parse(self.get(&format!("/api/v1/builders/{id}")).await?)
    }

    /// Uploads a source archive; returns its SHA-256.
    pub async fn upload_source(&self, archive: Vec<u8>) -> anyhow::Result<String> {
        let mut response = self
            .client
            .post(self.url("/api/v1/sources"))
            .bearer_auth(&self.token)
            .send_body(archive)
            .await
            .map_err(|e| anyhow::anyhow!("POST /api/v1/sources: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("POST /api/v1/sources: {status}: {body}");
        }
        let uploaded: UploadedSource = parse(body)?;
        Ok(uploaded.sha256)
    }

    /// The value of an unlabelled counter or gauge of `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.get_bytes("/metrics").await?;
        let text = String::from_utf8_lossy(&text);
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
            .with_context(|| format!("no metric {name}"))
    }
}

/// A one-attempt job whose source simulated builders never fetch.
fn noop_job(recipe: &str) -> SubmitJob {
    SubmitJob {
        source_url: Some("http://127.0.0.1:9/noop.tar.gz".into()),
        max_attempts: Some(1),
        ..SubmitJob::new(NOOP_SOURCE_SHA256, recipe)
    }
}

/// Reads an answer as one of the API's bodies.
fn parse<T: serde::de::DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    serde_json::from_value(value).context("unexpected answer from the backend")
}

/// An awc client without awc's default limit of 100 connections and 5 s timeout.
pub fn http_client(timeout: Duration) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(timeout)
        .finish()
}
