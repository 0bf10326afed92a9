//! The versioned schema changes of each backend, embedded so the binary carries its schema.
//! Append only: a released migration is never edited, a change is a new file with the next version.

pub(crate) struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../migrations/sqlite/0002_parking_and_digests.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("../migrations/sqlite/0003_ingest.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("../migrations/sqlite/0004_uncertain_requests.sql"),
    },
    Migration {
        version: 5,
        sql: include_str!("../migrations/sqlite/0005_google_email_hashes.sql"),
    },
    Migration {
        version: 6,
        sql: include_str!("../migrations/sqlite/0006_reconcile_runs.sql"),
    },
    Migration {
        version: 7,
        sql: include_str!("../migrations/sqlite/0007_in_doubt_index.sql"),
    },
    Migration {
        version: 8,
        sql: include_str!("../migrations/sqlite/0008_ingest_aliases_and_cursors.sql"),
    },
    Migration {
        version: 9,
        sql: include_str!("../migrations/sqlite/0009_ingest_contact_refs.sql"),
    },
    Migration {
        version: 10,
        sql: include_str!("../migrations/sqlite/0010_reconcile_repairs.sql"),
    },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../migrations/postgres/0002_parking_and_digests.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("../migrations/postgres/0003_ingest.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("../migrations/postgres/0004_uncertain_requests.sql"),
    },
    Migration {
        version: 5,
        sql: include_str!("../migrations/postgres/0005_google_email_hashes.sql"),
    },
    Migration {
        version: 6,
        sql: include_str!("../migrations/postgres/0006_reconcile_runs.sql"),
    },
    Migration {
        version: 7,
        sql: include_str!("../migrations/postgres/0007_in_doubt_index.sql"),
    },
    Migration {
        version: 8,
        sql: include_str!("../migrations/postgres/0008_ingest_aliases_and_cursors.sql"),
    },
    Migration {
        version: 9,
        sql: include_str!("../migrations/postgres/0009_ingest_contact_refs.sql"),
    },
    Migration {
        version: 10,
        sql: include_str!("../migrations/postgres/0010_reconcile_repairs.sql"),
    },
];

/// The schema version this build writes; both backends agree on it (tested below).
pub(crate) fn latest() -> i64 {
    SQLITE.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_without_gaps_and_backends_agree() {
        for list in [SQLITE, POSTGRES] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version, i as i64 + 1);
            }
        }
        assert_eq!(SQLITE.len(), POSTGRES.len());
    }
}
