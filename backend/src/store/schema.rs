//! Hand-written Diesel schema that fits both backends: only types that PostgreSQL and SQLite
//! map the same way (BigInt, Integer, Text, Bool). Keep in step with `migrations/*/`.

diesel::table! {
    builders (id) {
        id -> BigInt,
        name -> Text,
        public_key -> Text,
        fingerprint -> Text,
        enabled -> Bool,
        labels -> Text,
        created_at -> BigInt,
        last_seen_at -> Nullable<BigInt>,
        control -> Nullable<Text>,
    }
}

diesel::table! {
    builder_keys (id) {
        id -> BigInt,
        builder_id -> BigInt,
        public_key -> Text,
        fingerprint -> Text,
        valid_after -> BigInt,
        valid_before -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        revoked_reason -> Nullable<Text>,
    }
}

diesel::table! {
    jobs (id) {
        id -> BigInt,
        source_url -> Text,
        source_sha256 -> Text,
        source_max_bytes -> BigInt,
        recipe -> Text,
        parameters -> Text,
        required_labels -> Text,
        mode -> Text,
        priority -> Integer,
        state -> Text,
        attempt -> Integer,
        max_attempts -> Integer,
        failed_attempts -> Integer,
        timeout_secs -> BigInt,
        submitter -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        cancel_requested_at -> Nullable<BigInt>,
        error -> Nullable<Text>,
        builder_id -> Nullable<BigInt>,
        annotations -> Text,
        project_id -> BigInt,
        retry_policy -> Nullable<Text>,
        retry_not_before -> Nullable<BigInt>,
        manual_retries -> Integer,
        reproduce -> Integer,
        on_mismatch -> Text,
    }
}

diesel::table! {
    job_attempts (id) {
        id -> BigInt,
        job_id -> BigInt,
        attempt -> Integer,
        builder_id -> Nullable<BigInt>,
        job_token_hash -> Nullable<Text>,
        lease_expires_at -> BigInt,
        outcome -> Nullable<Text>,
        exit_status -> Nullable<Integer>,
        error -> Nullable<Text>,
        assigned_at -> BigInt,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        statement -> Nullable<Text>,
        statement_signature -> Nullable<Text>,
        plan -> Nullable<Text>,
        forgiven_at -> Nullable<BigInt>,
        dsse_signature -> Nullable<Text>,
        reproduction_statement -> Nullable<Text>,
        reproduction_signature -> Nullable<Text>,
        reproduction_dsse_signature -> Nullable<Text>,
    }
}

diesel::table! {
    statement_signatures (job_id, signer_fingerprint) {
        job_id -> BigInt,
        signer_fingerprint -> Text,
        builder_id -> Nullable<BigInt>,
        sshsig -> Text,
        dsse_sig -> Nullable<Text>,
    }
}

diesel::table! {
    attempt_causes (job_id, attempt) {
        job_id -> BigInt,
        attempt -> Integer,
        cause -> Text,
    }
}

diesel::table! {
    job_events (id) {
        id -> BigInt,
        job_id -> BigInt,
        attempt -> Integer,
        from_state -> Nullable<Text>,
        to_state -> Text,
        at -> BigInt,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    log_chunks (id) {
        id -> BigInt,
        job_id -> BigInt,
        attempt -> Integer,
        first_seq -> BigInt,
        last_seq -> BigInt,
        location -> Text,
        byte_offset -> BigInt,
        length -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    artifacts (id) {
        id -> BigInt,
        job_id -> BigInt,
        attempt -> Integer,
        name -> Text,
        size -> BigInt,
        sha256 -> Text,
        storage_key -> Text,
        statement -> Nullable<Text>,
        statement_signature -> Nullable<Text>,
        published -> Bool,
        created_at -> BigInt,
    }
}

diesel::table! {
    sources (sha256) {
        sha256 -> Text,
        size -> BigInt,
        storage_key -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> BigInt,
        token_hash -> Text,
        scope -> Text,
        description -> Text,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        project_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    enrolment_tokens (id) {
        id -> BigInt,
        token_hash -> Text,
        labels -> Text,
        max_uses -> Integer,
        uses -> Integer,
        created_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    organisations (id) {
        id -> BigInt,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    projects (id) {
        id -> BigInt,
        organisation_id -> BigInt,
        name -> Text,
        public -> Bool,
        weight -> Integer,
        created_at -> BigInt,
        reproduce -> Integer,
    }
}

diesel::table! {
    builder_projects (builder_id, project_id) {
        builder_id -> BigInt,
        project_id -> BigInt,
    }
}

diesel::table! {
    project_usage (project_id, bucket_start) {
        project_id -> BigInt,
        bucket_start -> BigInt,
        used_ms -> BigInt,
        attempts -> BigInt,
    }
}

diesel::joinable!(jobs -> builders (builder_id));
diesel::joinable!(jobs -> projects (project_id));
diesel::joinable!(projects -> organisations (organisation_id));
diesel::joinable!(builder_projects -> projects (project_id));
diesel::joinable!(builder_projects -> builders (builder_id));
diesel::joinable!(builder_keys -> builders (builder_id));
diesel::joinable!(job_attempts -> jobs (job_id));
diesel::joinable!(job_events -> jobs (job_id));
diesel::joinable!(log_chunks -> jobs (job_id));
diesel::joinable!(artifacts -> jobs (job_id));
diesel::joinable!(statement_signatures -> jobs (job_id));
diesel::joinable!(statement_signatures -> builders (builder_id));

diesel::table! {
    job_submissions (idempotency_key) {
        idempotency_key -> Text,
        request_sha256 -> Text,
        job_id -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    job_annotations (job_id, key) {
        job_id -> BigInt,
        key -> Text,
        value -> Text,
        value_sha256 -> Text,
    }
}

diesel::joinable!(job_annotations -> jobs (job_id));

diesel::table! {
    registry_versions (registry, crate_name, version) {
        registry -> Text,
        crate_name -> Text,
        version -> Text,
        cksum -> Text,
        yanked -> Bool,
        status -> Text,
        reason -> Nullable<Text>,
        seen_at -> BigInt,
    }
}

diesel::table! {
    registry_builds (registry, crate_name, version, target, recipe) {
        registry -> Text,
        crate_name -> Text,
        version -> Text,
        target -> Text,
        recipe -> Text,
        job_id -> BigInt,
        backfill -> Bool,
        parent_job_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    registry_cursors (registry, name) {
        registry -> Text,
        name -> Text,
        value -> Text,
        updated_at -> BigInt,
    }
}

diesel::joinable!(registry_builds -> jobs (job_id));

diesel::table! {
    webhooks (id) {
        id -> BigInt,
        project_id -> BigInt,
        url -> Text,
        secret -> Text,
        events -> Text,
        enabled -> Bool,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> BigInt,
        webhook_id -> BigInt,
        job_id -> BigInt,
        job_attempt -> Integer,
        event -> Text,
        payload -> Text,
        attempts -> Integer,
        next_attempt_at -> Nullable<BigInt>,
        last_status -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_delivery_attempts (delivery_id, attempt) {
        delivery_id -> BigInt,
        attempt -> Integer,
        at -> BigInt,
        status -> Nullable<Integer>,
        error -> Nullable<Text>,
        duration_ms -> BigInt,
    }
}

diesel::table! {
    project_retention (project_id) {
        project_id -> BigInt,
        artifacts_max_age_days -> Nullable<Integer>,
        artifacts_keep_last -> Nullable<Integer>,
        logs_max_age_days -> Nullable<Integer>,
        logs_keep_last -> Nullable<Integer>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    job_expirations (job_id) {
        job_id -> BigInt,
        artifacts_expired_at -> Nullable<BigInt>,
        logs_expired_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(webhooks -> projects (project_id));
diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhook_delivery_attempts -> webhook_deliveries (delivery_id));

diesel::table! {
    job_runs (job_id, run) {
        job_id -> BigInt,
        run -> Integer,
        attempt -> Integer,
        builder_id -> BigInt,
        owner_label -> Text,
        owner -> Nullable<Text>,
        signer_fingerprint -> Nullable<Text>,
        artifacts -> Text,
        finished_at -> BigInt,
    }
}

diesel::table! {
    job_reproductions (job_id) {
        job_id -> BigInt,
        verdict -> Text,
        evidence -> Text,
        published_first -> Bool,
        decided_at -> BigInt,
    }
}

diesel::table! {
    cluster_identity (id) {
        id -> Integer,
        backend_id -> Text,
    }
}

diesel::table! {
    blob_deletions (id) {
        id -> BigInt,
        storage_key -> Text,
        recorded_at -> BigInt,
        next_attempt_at -> BigInt,
        attempts -> Integer,
        last_error -> Nullable<Text>,
    }
}

diesel::joinable!(job_runs -> jobs (job_id));
diesel::joinable!(job_reproductions -> jobs (job_id));

diesel::allow_tables_to_appear_in_same_query!(
    job_runs,
    job_reproductions,
    builders,
    jobs,
    job_annotations,
    job_attempts,
    attempt_causes,
    job_events,
    log_chunks,
    artifacts,
    sources,
    api_tokens,
    enrolment_tokens,
    job_submissions,
    registry_versions,
    registry_builds,
    registry_cursors,
    organisations,
    projects,
    builder_projects,
    builder_keys,
    project_usage,
    webhooks,
    webhook_deliveries,
    webhook_delivery_attempts,
    project_retention,
    job_expirations,
    statement_signatures,
    cluster_identity,
    blob_deletions,
);
