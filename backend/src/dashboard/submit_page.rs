//! The submit form: a crate from the registry (`name@version`, as the CLI's `--crate`) or a
//! source archive (uploaded, or a URL and its digest), the recipe (the connected builders'
//! recipes offered as a list), and the job's settings. `app.js` sends it to the API with the
//! admin token and shows the API's refusal as it is.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use maud::html;

use super::error_page::PageError;
use super::pages::{layout, live_builders};
use crate::http::AppState;

/// The API's default, shown as the field's value.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

pub async fn submit(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
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
        p.muted { "Needs the admin token (top right). Name a crate to build it from the registry, or give a source archive: upload one, or its URL and SHA-256." }
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
            label { "Mode" select name="mode" { option value="build" { "build" } option value="plan" { "plan (dry run)" } } }
            label { "Parameters (k=v, comma separated)" input name="parameters" placeholder="features=serde" autocomplete="off"; }
            label { "Required builder labels (k=v)" input name="labels" placeholder="os=linux" autocomplete="off"; }
            label.wide { "Annotations (one k=v per line)" textarea name="annotations" rows="3" placeholder="commit=1a2b3c4d\nbranch=main" {} }
            label { "Priority" input type="number" name="priority" value="0" min="-1000" max="1000"; }
            label { "Timeout (seconds)" input type="number" name="timeout_secs" value="3600" min="1"; }
            label { "Max attempts" input type="number" name="max_attempts" value=(DEFAULT_MAX_ATTEMPTS) min="1" max="20"; }
            div { button type="submit" { "Submit" } }
        }
    };
    Ok(layout("Submit", body))
}
