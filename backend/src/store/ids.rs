//! Typed identifiers, so a job id can't be passed where a builder id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            pub fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

id_type!(
    /// A job, as numbered by the database.
    JobId(i64)
);
id_type!(
    /// An admitted builder, as numbered by the database.
    BuilderId(i64)
);
id_type!(
    /// A project, as numbered by the database.
    ProjectId(i64)
);
id_type!(
    /// An organisation (the owner of projects), as numbered by the database.
    OrganisationId(i64)
);

impl ProjectId {
    /// `default/default`: jobs submitted without naming a project, and every job made before
    /// projects existed (the migration creates it with this id).
    pub const DEFAULT: ProjectId = ProjectId(1);
}

id_type!(
    /// An API token's row id (not the secret).
    ApiTokenId(i64)
);
id_type!(
    /// The attempt number of a job, starting at 1. It is the fencing token: every write made on
    /// behalf of a builder names it, and a write naming anything but the job's live attempt is
    /// refused.
    Attempt(i32)
);

impl Attempt {
    pub const FIRST: Attempt = Attempt(1);

    pub fn next(self) -> Attempt {
        Attempt(self.0 + 1)
    }
}
