//! API tokens: bearer secrets for reading, submitting and administering, stored as SHA-256.
//! A token belongs to one project (its scope applies there) or to none (a token of the whole
//! service: only its admin scope means anything beyond what anonymous callers may do).

use diesel::prelude::*;
use serde::Serialize;

use super::connection::Db;
use super::error::StoreError;
use super::ids::{ApiTokenId, ProjectId};
use super::jobs::parse_column;
use super::schema::api_tokens;
use super::secret;
use super::state::string_enum;
use super::Store;

string_enum!(
    /// What a token may do.
    TokenScope, "token scope" {
        /// Everything: builders, tokens, jobs (within its project, for a project's token).
        Admin => "admin",
        /// Read, and submit, cancel and retry jobs.
        Submit => "submit",
        /// See private jobs, logs, artifacts and builders of its project.
        Read => "read",
    }
);

impl TokenScope {
    /// Each scope includes the ones below it.
    fn rank(self) -> u8 {
        match self {
            TokenScope::Read => 0,
            TokenScope::Submit => 1,
            TokenScope::Admin => 2,
        }
    }

    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: TokenScope) -> bool {
        self.rank() >= needed.rank()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub id: ApiTokenId,
    /// The project the token acts in; `None`: the whole service.
    pub project: Option<ProjectId>,
    pub scope: TokenScope,
    pub description: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = api_tokens)]
struct ApiTokenRow {
    id: i64,
    scope: String,
    description: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    project_id: Option<i64>,
}

impl TryFrom<ApiTokenRow> for ApiToken {
    type Error = StoreError;

    fn try_from(row: ApiTokenRow) -> Result<Self, StoreError> {
        Ok(ApiToken {
            id: ApiTokenId(row.id),
            project: row.project_id.map(ProjectId),
            scope: parse_column(&row.scope)?,
            description: row.description,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        })
    }
}

const API_TOKEN_PREFIX: &str = "bfapi_";

impl Store {
    /// Creates a token of `project` (checked to exist by the caller), or of the whole
    /// service; returns it with its secret, which is shown this once.
    pub fn create_api_token(
        &self,
        project: Option<ProjectId>,
        scope: TokenScope,
        description: &str,
        expires_at: Option<i64>,
    ) -> Result<(ApiToken, String), StoreError> {
        let now = self.now_ms();
        let plaintext = secret::generate(API_TOKEN_PREFIX);
        let token_hash = secret::hash(&plaintext);
        let row = self.write(|conn| {
            Ok(diesel::insert_into(api_tokens::table)
                .values((
                    api_tokens::token_hash.eq(&token_hash),
                    api_tokens::scope.eq(scope.as_str()),
                    api_tokens::description.eq(description),
                    api_tokens::created_at.eq(now),
                    api_tokens::expires_at.eq(expires_at),
                    api_tokens::project_id.eq(project.map(|p| p.0)),
                ))
                .returning(<ApiTokenRow as Selectable<Db>>::construct_selection())
                .get_result::<ApiTokenRow>(conn)?)
        })?;
        Ok((ApiToken::try_from(row)?, plaintext))
    }

    /// The token a bearer secret belongs to, if it is neither revoked nor expired at `now`.
    /// Looked up by hash: the database never sees the secret, and a timing difference in
    /// the lookup reveals only bits of a hash.
    pub fn verify_api_token(
        &self,
        plaintext: &str,
        now: i64,
    ) -> Result<Option<ApiToken>, StoreError> {
        let row = api_tokens::table
            .filter(api_tokens::token_hash.eq(secret::hash(plaintext)))
            .filter(api_tokens::revoked_at.is_null())
            .filter(
                api_tokens::expires_at
                    .is_null()
                    .or(api_tokens::expires_at.gt(now)),
            )
            .select(ApiTokenRow::as_select())
            .first(&mut *self.conn()?)
            .optional()?;
        row.map(ApiToken::try_from).transpose()
    }

    /// Revokes a token now. Revoking a revoked token keeps its first revocation time.
    pub fn revoke_api_token(&self, id: ApiTokenId) -> Result<ApiToken, StoreError> {
        let now = self.now_ms();
        self.write(|conn| {
            diesel::update(
                api_tokens::table
                    .find(id.0)
                    .filter(api_tokens::revoked_at.is_null()),
            )
            .set(api_tokens::revoked_at.eq(now))
            .execute(conn)?;
            api_tokens::table
                .find(id.0)
                .select(ApiTokenRow::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| StoreError::not_found("api token", id))
                .and_then(ApiToken::try_from)
        })
    }

    /// Every token (without secrets), oldest first.
    pub fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        api_tokens::table
            .order(api_tokens::id.asc())
            .select(ApiTokenRow::as_select())
            .load(&mut *self.conn()?)?
            .into_iter()
            .map(ApiToken::try_from)
            .collect()
    }

    /// The tokens of one project (without secrets), oldest first.
    pub fn list_project_api_tokens(&self, project: ProjectId) -> Result<Vec<ApiToken>, StoreError> {
        api_tokens::table
            .filter(api_tokens::project_id.eq(project.0))
            .order(api_tokens::id.asc())
            .select(ApiTokenRow::as_select())
            .load(&mut *self.conn()?)?
            .into_iter()
            .map(ApiToken::try_from)
            .collect()
    }

    /// One token (without its secret), revoked or not.
    pub fn api_token(&self, id: ApiTokenId) -> Result<Option<ApiToken>, StoreError> {
        api_tokens::table
            .find(id.0)
            .select(ApiTokenRow::as_select())
            .first(&mut *self.conn()?)
            .optional()?
            .map(ApiToken::try_from)
            .transpose()
    }
}
