//! The registry follower's pages: a crate (its versions, newest first, and per version and
//! target the build's state, binaries and how to install and verify them) and the registry
//! (position, last fetch, lag, recent and skipped versions).

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use buildfleet_api::{CrateDetail, CrateVersion};
use maud::{html, Markup};

use super::error_page::PageError;
use super::pages::{format_time, layout, state_badge};
use crate::cli::output::size;
use crate::error::blocking;
use crate::http::registry::{load_crate, load_status};
use crate::http::AppState;
use crate::store::{JobId, JobState};

/// A published binary archive of a build, for the table.
struct Binary {
    name: String,
    size: u64,
    sha256: String,
}

pub async fn crate_page(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let detail = load_crate(&state, path.into_inner()).await?;
    let succeeded: Vec<i64> = detail
        .versions
        .iter()
        .flat_map(|v| &v.builds)
        .filter(|b| b.state == JobState::Succeeded && b.recipe != "crate-metadata")
        .map(|b| b.job)
        .collect();
    let store = state.store.clone();
    let binaries = blocking(move || {
        let mut binaries = BTreeMap::new();
        for job in succeeded {
            let list: Vec<Binary> = store
                .artifacts(JobId(job), true)?
                .into_iter()
                .map(|a| Binary {
                    name: a.name,
                    size: u64::try_from(a.size).unwrap_or(0),
                    sha256: a.sha256,
                })
                .collect();
            binaries.insert(job, list);
        }
        Ok(binaries)
    })
    .await?;
    let title = format!("Crate {}", detail.krate);
    Ok(layout(
        &title,
        crate_body(&state.public_url, &detail, &binaries),
    ))
}

fn crate_body(
    public_url: &str,
    detail: &CrateDetail,
    binaries: &BTreeMap<i64, Vec<Binary>>,
) -> Markup {
    html! {
        h1 { (detail.krate) }
        p.muted { "Followed in registry " (detail.registry) " · " a href="/registry" { "registry status" } " · " a href={ "/jobs?annotation=crate:" (detail.krate) } { "all jobs" } }
        @for version in &detail.versions {
            section.crate-version aria-label={ "Version " (version.version) } {
                h2 {
                    (version.version) " "
                    span class={ "state state-version-" (version.status) } { (version.status) }
                    @if version.yanked && version.status != "yanked" { " " span.state.state-version-yanked { "yanked" } }
                }
                p.muted {
                    "Seen " (format_time(version.seen_at)) " UTC"
                    @if let Some(reason) = &version.reason { " · " (reason) }
                }
                p.mono.wrap { "cksum sha256:" (version.cksum) }
                @if !version.builds.is_empty() {
                    div.table-wrap { table {
                        thead { tr { th { "Target" } th { "Recipe" } th { "Job" } th { "State" } th { "Binaries" } } }
                        tbody { @for build in &version.builds {
                            tr {
                                td.mono { @if build.target.is_empty() { span.muted { "builder's own" } } @else { (build.target) } }
                                td.mono { (build.recipe) @if build.backfill { " " span.muted { "(backfill)" } } }
                                td { a href={ "/jobs/" (build.job) } { "#" (build.job) } }
                                td { (state_badge(build.state)) }
                                td {
                                    @for binary in binaries.get(&build.job).into_iter().flatten() {
                                        div.mono.wrap { (binary.name) " · " (size(binary.size)) br; "sha256:" (binary.sha256) }
                                    }
                                }
                            }
                        } }
                    } }
                    (install_block(public_url, &detail.krate, version))
                }
            }
        }
    }
}

/// How to install a version's build for each target it succeeded for, and check it.
fn install_block(public_url: &str, krate: &str, version: &CrateVersion) -> Markup {
    let targets: Vec<&str> = version
        .builds
        .iter()
        .filter(|b| {
            b.state == JobState::Succeeded && !b.target.is_empty() && b.recipe != "crate-metadata"
        })
        .map(|b| b.target.as_str())
        .collect();
    html! {
        @for target in targets {
            details {
                summary { "Install and verify for " (target) }
                pre.log { (format!(
                    "cargo binstall --pkg-url \"{public_url}/api/v1/crates/{{ name }}/{{ version }}/{{ target }}/download\" \\\n  \
                     --pkg-fmt tgz --bin-dir \"{{ bin }}{{ binary-ext }}\" {krate}@{v}\n\n\
                     curl -fsSL {public_url}/api/v1/crates/{krate}/{v}/{target}/statement -o statement.json\n\
                     curl -fsSL {public_url}/api/v1/crates/{krate}/{v}/{target}/statement.sig -o statement.json.sig\n\
                     curl -fsS {public_url}/api/v1/allowed_signers -o allowed_signers\n\
                     ssh-keygen -Y verify -f allowed_signers -I <builder> -n buildfleet-statement -s statement.json.sig < statement.json",
                    v = version.version
                )) }
            }
        }
    }
}

pub async fn registry_page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let status = load_status(&state).await?;
    let now = state.store.now_ms();
    let body = html! {
        h1 { "Registry " (status.name) }
        div.table-wrap { table { tbody {
            tr { th { "Index" } td.mono.wrap { (status.index) " (" (status.protocol) ")" } }
            tr { th { "Following" } td {
                @if status.crates.is_empty() { "every crate" } @else {
                    @for (i, krate) in status.crates.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href={ "/crates/" (krate) } { (krate) }
                    }
                }
            } }
            @if let Some(position) = &status.position { tr { th { "Position" } td.mono.wrap { (position) } } }
            tr { th { "Last fetch" } td {
                @if let Some(at) = status.last_fetch_at {
                    (format_time(at)) " UTC (" ((now - at).max(0) / 1000) " s ago)"
                } @else { span.muted { "not yet" } }
            } }
            tr { th { "Last error" } td.mono.wrap {
                @if let Some(error) = &status.last_error { span.blocked { (error) } } @else { span.muted { "none" } }
            } }
        } } }
        h2 { "Recently queued" }
        (versions_table(&status.recent))
        h2 { "Skipped" }
        (versions_table(&status.skipped))
    };
    Ok(layout("Registry", body))
}

fn versions_table(versions: &[CrateVersion]) -> Markup {
    html! {
        @if versions.is_empty() {
            p.muted { "None." }
        } @else {
            div.table-wrap { table {
                thead { tr { th { "Crate" } th { "Version" } th { "Status" } th { "Seen" } th { "Reason" } } }
                tbody { @for v in versions {
                    tr {
                        td { a href={ "/crates/" (v.krate) } { (v.krate) } }
                        td.mono { (v.version) }
                        td { (v.status) }
                        td { (format_time(v.seen_at)) }
                        td { (v.reason.clone().unwrap_or_default()) }
                    }
                } }
            } }
        }
    }
}
