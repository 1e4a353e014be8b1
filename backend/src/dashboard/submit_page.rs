//! The submit form: a crate from the registry (`name@version`, as the CLI's `--crate`) or a
//! source archive (uploaded, or a URL and its digest), the recipe (the connected builders'
//! recipes offered as a list), the project (those the session cookie's token may submit to),
//! the job's settings and its retry policy. `app.js` sends it to the API with the token and
//! shows the API's refusal as it is.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use buildfleet_api::RetryPolicy;
use maud::{html, Markup};

use super::error_page::PageError;
use super::pages::{layout, live_builders};
use crate::error::blocking;
use crate::http::auth::{Access, Who};
use crate::http::AppState;
use crate::store::{ProjectId, TokenScope};

/// The API's default, shown as the field's value.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let access = Access::of_cookie(&req, &state).await?;
    let store = state.store.clone();
    let projects = blocking(move || {
        // Where the token may submit: the admin anywhere, a submit or admin token in its own
        // project. Without one, `default/default` (the API says what is missing on submit).
        let mut projects: Vec<(ProjectId, String)> = store
            .list_projects()?
            .into_iter()
            .filter(|p| match &access.who {
                Who::Admin { .. } => true,
                Who::Project { project, scope, .. } => {
                    *project == p.id && scope.allows(TokenScope::Submit)
                }
                Who::Anonymous => false,
            })
            .map(|p| (p.id, p.slug()))
            .collect();
        if projects.is_empty() {
            projects.push((ProjectId::DEFAULT, "default/default".to_owned()));
        }
        // `default/default` first, then by name.
        projects.sort_by(|a, b| {
            (a.0 != ProjectId::DEFAULT, &a.1).cmp(&(b.0 != ProjectId::DEFAULT, &b.1))
        });
        Ok(projects)
    })
    .await?;
    let live = live_builders(&state).await?;
    // Recipe → how many connected builders offer it.
    let mut offered: BTreeMap<&str, usize> = BTreeMap::new();
    for builder in live.values() {
        for recipe in &builder.recipes {
            *offered.entry(recipe.as_str()).or_default() += 1;
        }
    }
    let default_recipe = if offered.contains_key("cargo-build") || offered.is_empty() {
        "cargo-build"
    } else {
        offered.keys().next().copied().unwrap_or("cargo-build")
    };
    let body = html! {
        h1 { "Submit a build" }
        p.muted { "Needs a token that may submit (top right). Name a crate to build it from the registry, or give a source archive: upload one, or its URL and SHA-256." }
        form #submit-form .form-grid {
            fieldset.wide {
                legend { "What to build" }
                div.form-grid.inner {
                    label { "Crate (name@version)"
                        input name="crate" autocomplete="off" spellcheck="false" placeholder="itoa@1.0.14"
                            pattern="[A-Za-z0-9_-]+@[0-9A-Za-z.+-]+" title="name@version, e.g. itoa@1.0.14";
                    }
                    label { "or a source archive" input type="file" name="archive" accept=".crate,.tar.gz,.tgz"; }
                    label { "or a source URL" input type="url" name="source_url" placeholder="https://…/crate-1.0.0.crate"; }
                    label { "SHA-256 (with a URL)" input name="source_sha256" pattern="[0-9a-fA-F]{64}" placeholder="64 hex characters" spellcheck="false"; }
                }
            }
            div.field {
                label { "Recipe"
                    input name="recipe" value=(default_recipe) required list="offered-recipes" autocomplete="off" aria-describedby="recipes-offered";
                }
                datalist #offered-recipes {
                    @for recipe in offered.keys() { option value=(recipe) {} }
                }
                p.hint #recipes-offered {
                    @if offered.is_empty() {
                        "No builder is connected: a job waits until one that offers its recipe connects."
                    } @else {
                        "Offered now: "
                        @for (i, (recipe, count)) in offered.iter().enumerate() {
                            @if i > 0 { ", " }
                            span.mono { (recipe) } " (" (count) " builder" @if *count != 1 { "s" } ")"
                        }
                    }
                }
            }
            label { "Project"
                select name="project" {
                    @for (_, slug) in &projects { option value=(slug) { (slug) } }
                }
            }
            label { "Mode" select name="mode" { option value="build" { "build" } option value="plan" { "plan (dry run)" } } }
            label { "Parameters (k=v, comma separated)" input name="parameters" placeholder="features=serde" autocomplete="off"; }
            label { "Required builder labels (k=v)" input name="labels" placeholder="os=linux" autocomplete="off"; }
            label.wide { "Annotations (one k=v per line)" textarea name="annotations" rows="3" placeholder="commit=1a2b3c4d\nbranch=main" {} }
            label { "Priority" input type="number" name="priority" value="0" min="-1000" max="1000"; }
            label { "Timeout (seconds)" input type="number" name="timeout_secs" value="3600" min="1"; }
            label { "Max attempts" input type="number" name="max_attempts" value=(DEFAULT_MAX_ATTEMPTS) min="1" max="20"; }
            (retry_fieldset())
            div { button type="submit" { "Submit" } }
        }
    };
    Ok(layout("Submit", body))
}

/// The retry policy, collapsed: its fields hold the API's defaults, so a form left alone
/// submits the policy a job without `retry` gets.
fn retry_fieldset() -> Markup {
    let defaults = RetryPolicy::default();
    html! {
        details.wide.retry {
            summary { "Retry" }
            fieldset {
                legend { "Automatic retries (within max attempts)" }
                div.form-grid.inner {
                    label.check {
                        input type="checkbox" name="retry_lost_builder" checked[defaults.lost_builder];
                        "When the builder is lost (at once, on another builder)"
                    }
                    label.check {
                        input type="checkbox" name="retry_infrastructure" checked[defaults.infrastructure];
                        "On infrastructure failures (source fetch, upload, builder error)"
                    }
                    label { "On these exit codes (comma separated, or any)"
                        input name="retry_exit_codes" autocomplete="off" spellcheck="false" placeholder="1, 137"
                            pattern="\\s*(any|-?[0-9]+(\\s*,\\s*-?[0-9]+)*)?\\s*" title="exit codes such as 1, 137, or any";
                    }
                    label { "First back-off (seconds)"
                        input type="number" name="retry_backoff_initial_secs" min="0" step="1" value=(defaults.backoff_initial_ms / 1000);
                    }
                    label { "Longest back-off (seconds)"
                        input type="number" name="retry_backoff_max_secs" min="0" step="1" value=(defaults.backoff_max_ms / 1000);
                    }
                }
            }
        }
    }
}
