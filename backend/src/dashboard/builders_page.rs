//! The builders page: one card per admitted builder (status, load, what it runs, labels,
//! last contact and every action), a form to admit a pasted key, and enrolment tokens.
//!
//! The page shows what the visitor's session cookie sees, by the API's rule
//! (`http::builders::visible_builders`): a builder private to projects it cannot see is not
//! there, and neither is a running job of a project it cannot see.
//!
//! Everything public renders here. Actions go through the token-checked API from `app.js`;
//! the enrolment token list is read from the API with the admin token too, since listing
//! tokens is an admin action there and the page must not show more than the API would.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};

use super::error_page::PageError;
use super::job_summary::time;
use super::pages::{layout, live_builders, pairs};
use crate::actors::scheduler::LiveBuilder;
use crate::error::blocking;
use crate::http::auth::Access;
use crate::http::builders::visible_builders;
use crate::http::views::ProjectNames;
use crate::http::AppState;
use crate::store::{
    annotation_headline, Builder, BuilderId, Job, JobFilter, JobState, Store, StoreError,
};

/// Running jobs a card lists; the rest are one link away.
const SHOWN_RUNNING: usize = 5;

pub async fn builders(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let access = Access::of_cookie(&req, &state).await?;
    let store = state.store.clone();
    let (builders, private_to, running) = blocking(move || {
        let (builders, mut private_to) = visible_builders(&store, &access)?;
        // A builder serving a visible project and a hidden one names the visible one only.
        let seen = ProjectNames::load(&store)?.seen_by(&access);
        for slugs in private_to.values_mut() {
            slugs.retain(|slug| seen.contains(slug));
        }
        let mut running = active_jobs_by_builder(&store)?;
        for jobs in running.values_mut() {
            jobs.retain(|j| access.sees(j.project));
        }
        Ok((builders, private_to, running))
    })
    .await?;
    let mut live = live_builders(&state).await?;
    live.retain(|id, _| builders.iter().any(|b| b.id == *id));
    let body = html! {
        h1 { "Builders" }
        p.muted { (builders.len()) " admitted, " (live.len()) " connected." }
        @if builders.is_empty() {
            p.empty { "No builders admitted yet: admit a key below, or issue an enrolment token." }
        }
        div.builder-list {
            @for b in &builders {
                (card(
                    b,
                    live.get(&b.id),
                    running.get(&b.id).map_or(&[][..], Vec::as_slice),
                    private_to.get(&b.id).map_or(&[][..], Vec::as_slice),
                ))
            }
        }
        (admit_form())
        (enrolment_section())
    };
    Ok(layout("Builders", body))
}

/// Assigned and running jobs, by the builder that holds them, oldest first.
fn active_jobs_by_builder(store: &Store) -> Result<BTreeMap<BuilderId, Vec<Job>>, StoreError> {
    let mut by_builder: BTreeMap<BuilderId, Vec<Job>> = BTreeMap::new();
    for state in [JobState::Assigned, JobState::Running] {
        let mut before = None;
        loop {
            let page = store.list_jobs(&JobFilter {
                state: Some(state),
                before_id: before,
                limit: JobFilter::MAX_LIMIT,
                ..JobFilter::default()
            })?;
            let full = page.len() == JobFilter::MAX_LIMIT;
            before = page.last().map(|j| j.id);
            for job in page {
                if let Some(builder) = job.builder_id {
                    by_builder.entry(builder).or_default().push(job);
                }
            }
            if !full {
                break;
            }
        }
    }
    for jobs in by_builder.values_mut() {
        jobs.sort_by_key(|j| j.id);
    }
    Ok(by_builder)
}

fn card(b: &Builder, live: Option<&LiveBuilder>, running: &[Job], private_to: &[String]) -> Markup {
    let id = b.id;
    let action = |name: &str| format!("/api/v1/builders/{id}/{name}");
    html! {
        article.builder #{ "builder-" (id) } aria-labelledby={ "builder-" (id) "-name" } {
            div.builder-head {
                h2 #{ "builder-" (id) "-name" } { (b.name) }
                span.pills {
                    @if !b.enabled { span.state.state-disabled { "disabled" } " " }
                    @match live {
                        Some(l) => {
                            span.state.state-online { "online" }
                            @if l.paused { " " span.state.state-paused { "paused" } }
                            @if l.draining { " " span.state.state-draining { "draining" } }
                        }
                        None => span.state.state-offline { "offline" },
                    }
                }
            }
            dl.facts {
                div {
                    dt { "Load" }
                    dd { @match live {
                        Some(l) => { (l.active_jobs) " of " (l.max_concurrent) " slots" }
                        None => span.muted { "offline" },
                    } }
                }
                div {
                    dt { "Last contact" }
                    dd { @match (live, b.last_seen_at) {
                        (Some(_), _) => "connected now",
                        (None, Some(t)) => (time(t)),
                        (None, None) => span.muted { "never" },
                    } }
                }
                div.wide {
                    dt { "Running" }
                    dd {
                        @if running.is_empty() { span.muted { "nothing" } }
                        @for (i, job) in running.iter().take(SHOWN_RUNNING).enumerate() {
                            @if i > 0 { ", " }
                            a href={ "/jobs/" (job.id) } { "#" (job.id) }
                            " " (annotation_headline(&job.annotations).unwrap_or_else(|| job.recipe.clone()))
                        }
                        @if running.len() > SHOWN_RUNNING {
                            " and " a href={ "/jobs?builder=" (id) } { (running.len() - SHOWN_RUNNING) " more" }
                        }
                    }
                }
                div.wide {
                    dt { "Serves" }
                    dd {
                        @if private_to.is_empty() { "every project" }
                        @for (i, slug) in private_to.iter().enumerate() {
                            @if i > 0 { ", " }
                            a.mono href={ "/jobs?project=" (slug) } { (slug) }
                        }
                    }
                }
                div.wide {
                    dt { "Recipes" }
                    dd.mono { @match live {
                        Some(l) if !l.recipes.is_empty() => (l.recipes.join(", ")),
                        Some(_) => span.muted { "none" },
                        None => span.muted { "known while connected" },
                    } }
                }
                div {
                    dt { "Labels (operator)" }
                    dd.mono { @if b.labels.is_empty() { span.muted { "none" } } @else { (pairs(&b.labels)) } }
                }
                div {
                    dt { "Labels (declared)" }
                    dd.mono { @match live {
                        Some(l) if !l.declared_labels.is_empty() => {
                            (pairs(&l.declared_labels))
                            @if l.effective_labels != b.labels {
                                br; span.muted { "matched as " (pairs(&l.effective_labels)) }
                            }
                        }
                        Some(_) => span.muted { "none" },
                        None => span.muted { "known while connected" },
                    } }
                }
                div.wide { dt { "Key" } dd.mono { (b.fingerprint) } }
            }
            div.actions role="group" aria-label={ "Actions for " (b.name) } {
                @if let Some(l) = live {
                    @if l.paused || l.draining {
                        button.secondary type="button" data-action=(action("resume")) { "Resume" }
                    } @else {
                        button.secondary type="button" data-action=(action("pause")) { "Pause" }
                        button.secondary type="button" data-action=(action("drain")) { "Drain" }
                    }
                }
                @if b.enabled {
                    button.secondary type="button" data-action=(action("disable")) { "Disable" }
                } @else {
                    button.secondary type="button" data-action=(action("enable")) { "Enable" }
                }
                button.danger type="button" data-action={ "/api/v1/builders/" (id) }
                    data-method="DELETE" data-confirm={ "Remove " (b.name) "? Press again to confirm" } { "Remove" }
            }
            form.builder-projects data-builder=(id) {
                label {
                    "Serves only (organisation/project, comma separated; empty: every project)"
                    input name="projects" value=(private_to.join(", ")) autocomplete="off"
                        placeholder="every project";
                }
                button.secondary type="submit" { "Save projects" }
                p.form-error role="alert" hidden {}
            }
        }
    }
}

fn admit_form() -> Markup {
    html! {
        section #admit aria-labelledby="admit-heading" {
            h2 #admit-heading { "Admit a builder" }
            p.muted {
                "Paste the builder's OpenSSH public key: "
                code { "buildfleet-builder keygen" } " prints it. Needs the admin token."
            }
            form #admit-form .form-grid {
                label { "Name" input name="name" required maxlength="64" autocomplete="off" placeholder="ci-1"; }
                label { "Labels (k=v, comma separated)" input name="labels" autocomplete="off" placeholder="os=linux, arch=x86_64"; }
                label.wide { "Public key" textarea name="public_key" required rows="3" spellcheck="false" placeholder="ssh-ed25519 AAAA… builder@host" {} }
                div { button type="submit" { "Admit" } }
            }
        }
    }
}

fn enrolment_section() -> Markup {
    html! {
        section #enrolment aria-labelledby="enrolment-heading" {
            h2 #enrolment-heading { "Enrolment tokens" }
            p.muted {
                "A builder started with an enrolment token admits its own key (containers, fleets). "
                "The token is shown once; revoking it keeps the builders it admitted."
            }
            form #enrolment-form .form-grid {
                label { "Uses" input type="number" name="max_uses" value="1" min="1" max="10000" required; }
                label { "Valid for"
                    select name="ttl_secs" {
                        option value="600" { "10 minutes" }
                        option value="3600" selected { "1 hour" }
                        option value="86400" { "1 day" }
                        option value="604800" { "7 days" }
                    }
                }
                label { "Labels (k=v, comma separated)" input name="labels" autocomplete="off" placeholder="pool=ci"; }
                div { button type="submit" { "Issue token" } }
            }
            div #issued-token .message hidden {
                p { "New enrolment token (copy it now, it is not shown again):" }
                code #issued-secret {}
            }
            div #enrolment-tokens {
                p.muted { "Enter the admin token (top right) to list enrolment tokens." }
            }
        }
    }
}
