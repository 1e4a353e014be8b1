//! Organisations and their projects, and which projects a private builder serves.
//!
//! A project is named `organisation/project`. Every job belongs to one; the migration made
//! `default/default` ([`ProjectId::DEFAULT`]), public, for the jobs that name none.

use diesel::prelude::*;
use serde::Serialize;

use super::connection::DbConnection;
use super::error::StoreError;
use super::ids::{BuilderId, OrganisationId, ProjectId};
use super::schema::{builder_projects, organisations, projects};
use super::Store;

/// Longest organisation or project name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Fair-share weights allowed for a project.
pub const WEIGHTS: std::ops::RangeInclusive<i32> = 1..=1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Project {
    pub id: ProjectId,
    pub organisation_id: OrganisationId,
    pub organisation: String,
    pub name: String,
    /// Readable without a token (jobs, logs, artifacts); acting still needs one.
    pub public: bool,
    /// Its share of builder time against other projects with queued work.
    pub weight: i32,
    pub created_at: i64,
    /// How many independent builders must reproduce the project's jobs that name no
    /// `reproduce` (1: none).
    pub reproduce: i32,
}

impl Project {
    /// `organisation/project`, as the API and the CLI name it.
    pub fn slug(&self) -> String {
        format!("{}/{}", self.organisation, self.name)
    }
}

/// A project to create (its organisation is created with it when new).
#[derive(Debug, Clone)]
pub struct NewProject {
    pub organisation: String,
    pub name: String,
    pub public: bool,
    pub weight: i32,
}

/// What [`Store::update_project`] changes; `None` keeps the value.
#[derive(Debug, Clone, Default)]
pub struct ProjectChanges {
    pub public: Option<bool>,
    pub weight: Option<i32>,
    /// The default `reproduce` of the project's jobs (1..=5).
    pub reproduce: Option<i32>,
}

type ProjectRow = (i64, i64, String, String, bool, i32, i64, i32);

fn project_columns() -> (
    projects::id,
    projects::organisation_id,
    organisations::name,
    projects::name,
    projects::public,
    projects::weight,
    projects::created_at,
    projects::reproduce,
) {
    (
        projects::id,
        projects::organisation_id,
        organisations::name,
        projects::name,
        projects::public,
        projects::weight,
        projects::created_at,
        projects::reproduce,
    )
}

fn from_row(row: ProjectRow) -> Project {
    let (id, organisation_id, organisation, name, public, weight, created_at, reproduce) = row;
    Project {
        id: ProjectId(id),
        organisation_id: OrganisationId(organisation_id),
        organisation,
        name,
        public,
        weight,
        created_at,
        reproduce,
    }
}

/// Checks an organisation or project name: 1 to 64 bytes of `[a-z0-9_.-]`, starting with a
/// letter or digit, so a slug is unambiguous in URLs and on the command line.
pub fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "{what} name {name:?} is not 1 to {MAX_NAME_BYTES} bytes of lowercase letters, \
             digits, '_', '.' and '-' starting with a letter or digit"
        )))
    }
}

/// Splits `organisation/project`.
pub fn parse_slug(slug: &str) -> Result<(&str, &str), StoreError> {
    let (organisation, project) = slug.split_once('/').ok_or_else(|| {
        StoreError::InvalidInput(format!(
            "project {slug:?} is not of the form organisation/project"
        ))
    })?;
    check_name("organisation", organisation)?;
    check_name("project", project)?;
    Ok((organisation, project))
}

fn check_weight(weight: i32) -> Result<(), StoreError> {
    if WEIGHTS.contains(&weight) {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "weight {weight} is outside {}..={}",
            WEIGHTS.start(),
            WEIGHTS.end()
        )))
    }
}

fn load_project(conn: &mut DbConnection, id: ProjectId) -> Result<Option<Project>, StoreError> {
    Ok(projects::table
        .inner_join(organisations::table)
        .filter(projects::id.eq(id.0))
        .select(project_columns())
        .first::<ProjectRow>(conn)
        .optional()?
        .map(from_row))
}

impl Store {
    /// Creates a project, and its organisation when new.
    pub fn create_project(&self, new: &NewProject) -> Result<Project, StoreError> {
        check_name("organisation", &new.organisation)?;
        check_name("project", &new.name)?;
        check_weight(new.weight)?;
        let now = self.now_ms();
        self.write(|conn| {
            let organisation = match organisations::table
                .filter(organisations::name.eq(&new.organisation))
                .select(organisations::id)
                .first::<i64>(conn)
                .optional()?
            {
                Some(id) => id,
                None => diesel::insert_into(organisations::table)
                    .values((
                        organisations::name.eq(&new.organisation),
                        organisations::created_at.eq(now),
                    ))
                    .returning(organisations::id)
                    .get_result::<i64>(conn)?,
            };
            let taken = projects::table
                .filter(projects::organisation_id.eq(organisation))
                .filter(projects::name.eq(&new.name))
                .select(projects::id)
                .first::<i64>(conn)
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::AlreadyExists {
                    entity: "project",
                    key: format!("{}/{}", new.organisation, new.name),
                });
            }
            let id = diesel::insert_into(projects::table)
                .values((
                    projects::organisation_id.eq(organisation),
                    projects::name.eq(&new.name),
                    projects::public.eq(new.public),
                    projects::weight.eq(new.weight),
                    projects::created_at.eq(now),
                ))
                .returning(projects::id)
                .get_result::<i64>(conn)?;
            load_project(conn, ProjectId(id))?.ok_or_else(|| StoreError::not_found("project", id))
        })
    }

    pub fn project(&self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        load_project(&mut *self.conn()?, id)
    }

    /// The project named `organisation/project`.
    pub fn project_by_slug(&self, slug: &str) -> Result<Option<Project>, StoreError> {
        let (organisation, name) = parse_slug(slug)?;
        Ok(projects::table
            .inner_join(organisations::table)
            .filter(organisations::name.eq(organisation))
            .filter(projects::name.eq(name))
            .select(project_columns())
            .first::<ProjectRow>(&mut *self.conn()?)
            .optional()?
            .map(from_row))
    }

    /// Every project, by organisation and name.
    pub fn list_projects(&self) -> Result<Vec<Project>, StoreError> {
        Ok(projects::table
            .inner_join(organisations::table)
            .order((organisations::name.asc(), projects::name.asc()))
            .select(project_columns())
            .load::<ProjectRow>(&mut *self.conn()?)?
            .into_iter()
            .map(from_row)
            .collect())
    }

    /// The ids of the public projects (readable without a token).
    pub fn public_projects(&self) -> Result<Vec<ProjectId>, StoreError> {
        Ok(projects::table
            .filter(projects::public.eq(true))
            .select(projects::id)
            .load::<i64>(&mut *self.conn()?)?
            .into_iter()
            .map(ProjectId)
            .collect())
    }

    pub fn update_project(
        &self,
        id: ProjectId,
        changes: &ProjectChanges,
    ) -> Result<Project, StoreError> {
        if let Some(weight) = changes.weight {
            check_weight(weight)?;
        }
        if let Some(k) = changes.reproduce {
            super::reproduction::check_reproduce(k)?;
        }
        self.write(|conn| {
            if let Some(public) = changes.public {
                diesel::update(projects::table.filter(projects::id.eq(id.0)))
                    .set(projects::public.eq(public))
                    .execute(conn)?;
            }
            if let Some(weight) = changes.weight {
                diesel::update(projects::table.filter(projects::id.eq(id.0)))
                    .set(projects::weight.eq(weight))
                    .execute(conn)?;
            }
            if let Some(k) = changes.reproduce {
                diesel::update(projects::table.filter(projects::id.eq(id.0)))
                    .set(projects::reproduce.eq(k))
                    .execute(conn)?;
            }
            load_project(conn, id)?.ok_or_else(|| StoreError::not_found("project", id))
        })
    }

    /// Makes a builder private to `projects` (replacing what it had); an empty list makes it
    /// shared by all projects again.
    pub fn set_builder_projects(
        &self,
        builder: BuilderId,
        projects: &[ProjectId],
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            super::builders::require_builder(conn, builder)?;
            for project in projects {
                if load_project(conn, *project)?.is_none() {
                    return Err(StoreError::not_found("project", project));
                }
            }
            diesel::delete(
                builder_projects::table.filter(builder_projects::builder_id.eq(builder.0)),
            )
            .execute(conn)?;
            for project in projects {
                diesel::insert_into(builder_projects::table)
                    .values((
                        builder_projects::builder_id.eq(builder.0),
                        builder_projects::project_id.eq(project.0),
                    ))
                    .execute(conn)?;
            }
            Ok(())
        })
    }

    /// The projects a builder is private to; empty for a builder shared by all.
    pub fn builder_projects(&self, builder: BuilderId) -> Result<Vec<ProjectId>, StoreError> {
        Ok(builder_projects::table
            .filter(builder_projects::builder_id.eq(builder.0))
            .order(builder_projects::project_id.asc())
            .select(builder_projects::project_id)
            .load::<i64>(&mut *self.conn()?)?
            .into_iter()
            .map(ProjectId)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("project", "web-app_2.0").is_ok());
        for bad in ["", "-x", "Upper", "a/b", "sp ace", &"x".repeat(65)] {
            assert!(check_name("project", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_slug("acme/web").ok(), Some(("acme", "web")));
        assert!(parse_slug("acme").is_err());
        assert!(parse_slug("acme/web/x").is_err());
    }

    #[test]
    fn weights_are_bounded() {
        assert!(check_weight(1).is_ok());
        assert!(check_weight(0).is_err());
        assert!(check_weight(1001).is_err());
    }
}
