//! Enrolment tokens over the real HTTP API: the admin endpoints' authorisation and input
//! checks, `POST /api/v1/enrol` admitting a key, the one 401 for every unusable token, the
//! token list, and enrolled keys then authenticating over the builder WebSocket.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use awc::http::{Method, StatusCode};
use buildfleet_backend::store::TokenScope;
use buildfleet_builder::enrol::{enrol as builder_enrol, EnrolError, Enrolment};
use buildfleet_builder::BuilderConfig;
use buildfleet_protocol::ErrorCode;
use buildfleet_testkit::builder_client::BuilderClient;
use buildfleet_testkit::db::TestDb;
use buildfleet_testkit::e2e::wait_connected;
use buildfleet_testkit::keys::TestKey;
use buildfleet_testkit::server::{error_code, wait_until, TestServer};
use buildfleet_testkit::server_tests;
use serde_json::{json, Value};

server_tests! {
    token_endpoints_need_the_admin_token,
    issuing_refuses_bad_input,
    enrolment_admits_the_key_with_the_token_labels,
    unusable_tokens_all_get_the_same_401,
    admitted_keys_taken_names_and_bad_input_are_refused,
    revoking_is_idempotent_and_keeps_enrolled_builders,
    token_list_reports_uses_and_usability,
    concurrent_enrolments_admit_exactly_max_uses,
    enrolled_ssh_keygen_key_authenticates_over_websocket,
    builder_enrols_itself_then_connects,
}

const TOKENS: &str = "/enrolment-tokens";

/// What a request got back.
struct Reply {
    status: StatusCode,
    www_authenticate: Option<String>,
    body: Value,
}

/// `METHOD /api/v1{path}` with an optional bearer token and raw JSON body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Reply {
    let url = server.api(path);
    let mut request = server
        .http
        .request(method.clone(), &url)
        .insert_header(("Content-Type", "application/json"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = request
        .send_body(body.unwrap_or_default())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let bytes = response
        .body()
        .await
        .unwrap_or_else(|e| panic!("{method} {url} body: {e}"));
    Reply {
        status: response.status(),
        www_authenticate: response
            .headers()
            .get("WWW-Authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Issues a token as the operator; it must succeed.
async fn issue(server: &TestServer, body: Value) -> Value {
    let (status, created) = server.post_admin(TOKENS, &body).await;
    assert_eq!(status, StatusCode::CREATED, "issuing {body}: {created}");
    created
}

fn id_of(token: &Value) -> i64 {
    token["id"].as_i64().expect("token id")
}

fn secret_of(token: &Value) -> String {
    token["token"].as_str().expect("token secret").to_owned()
}

/// `GET /enrolment-tokens` as the operator.
async fn list(server: &TestServer) -> Vec<Value> {
    let reply = call(server, Method::GET, TOKENS, Some(&server.admin_token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["enrolment_tokens"]
        .as_array()
        .expect("an enrolment_tokens array")
        .clone()
}

async fn listed(server: &TestServer, id: i64) -> Value {
    list(server)
        .await
        .into_iter()
        .find(|t| id_of(t) == id)
        .unwrap_or_else(|| panic!("token {id} is listed"))
}

async fn revoke(server: &TestServer, id: impl std::fmt::Display) -> Reply {
    call(
        server,
        Method::DELETE,
        &format!("{TOKENS}/{id}"),
        Some(&server.admin_token),
        None,
    )
    .await
}

/// `POST /enrol` for `key` under its own name.
async fn enrol(server: &TestServer, token: &str, key: &TestKey) -> (StatusCode, Value) {
    enrol_as(server, token, &key.name, &key.public_openssh).await
}

async fn enrol_as(
    server: &TestServer,
    token: &str,
    name: &str,
    public_key: &str,
) -> (StatusCode, Value) {
    server
        .post(
            "/enrol",
            None,
            &json!({ "token": token, "name": name, "public_key": public_key }),
        )
        .await
}

/// Names of the admitted builders.
async fn builder_names(server: &TestServer) -> BTreeSet<String> {
    server.get_ok("/builders").await["builders"]
        .as_array()
        .expect("a builders array")
        .iter()
        .map(|b| b["name"].as_str().expect("name").to_owned())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

fn wall_clock_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("fits")
}

/// Waits until the list says token `id` is no longer usable (its expiry passed).
async fn wait_unusable(server: &TestServer, id: i64) {
    wait_until(&format!("token {id} to expire"), move || async move {
        (listed(server, id).await["usable"] == false).then_some(())
    })
    .await;
}

async fn token_endpoints_need_the_admin_token(db: TestDb) {
    let server = TestServer::start(db).await;
    let id = id_of(&issue(&server, json!({ "max_uses": 1 })).await);
    let submit_only = server
        .with_store(|store| {
            store
                .create_api_token(None, TokenScope::Submit, "ci", None)
                .expect("submit token")
                .1
        })
        .await;

    let callers = [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some("bfapi_wrong"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Some(submit_only.as_str()),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (token, status, code) in callers {
        let revoke_path = format!("{TOKENS}/{id}");
        let requests = [
            (Method::POST, TOKENS, Some(r#"{"max_uses": 2}"#)),
            // Refused before the body is read, so a bad body says nothing either.
            (Method::POST, TOKENS, Some(r#"{"max_uses": 0"#)),
            (Method::GET, TOKENS, None),
            (Method::DELETE, revoke_path.as_str(), None),
        ];
        for (method, path, body) in requests {
            let what = format!("{method} {path} with {token:?}");
            let reply = call(&server, method, path, token, body.map(str::to_owned)).await;
            assert_eq!(reply.status, status, "{what}: {}", reply.body);
            assert_eq!(error_code(&reply.body), code, "{what}");
            assert!(reply.body.get("enrolment_tokens").is_none(), "{what}");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(reply.www_authenticate.as_deref(), Some("Bearer"), "{what}");
            }
        }
    }

    // Nothing was issued or revoked by the refused calls.
    let tokens = list(&server).await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0]["revoked_at"], Value::Null);
    assert_eq!(tokens[0]["usable"], true);
    server.shutdown().await;
}

async fn issuing_refuses_bad_input(db: TestDb) {
    let server = TestServer::start(db).await;
    let bad = [
        (r#"{"max_uses": 0}"#, "max_uses 0"),
        (r#"{"max_uses": 10001}"#, "max_uses over the limit"),
        (r#"{"max_uses": 4294967296}"#, "max_uses beyond u32"),
        (r#"{"max_uses": -1}"#, "negative max_uses"),
        (r#"{"max_uses": 1.5}"#, "fractional max_uses"),
        (r#"{"max_uses": "3"}"#, "max_uses as a string"),
        (r#"{}"#, "no max_uses"),
        (r#"{"max_uses": 1, "ttl_secs": 0}"#, "ttl 0"),
        (r#"{"max_uses": 1, "ttl_secs": -60}"#, "negative ttl"),
        (
            r#"{"max_uses": 1, "ttl_secs": 604801}"#,
            "ttl over seven days",
        ),
        (
            r#"{"max_uses": 1, "ttl_secs": 18446744073709551615}"#,
            "ttl u64::MAX",
        ),
        (r#"{"max_uses": 1, "ttl_secs": 1e300}"#, "ttl 1e300"),
        (r#"{"max_uses": 1, "labels": ["pool"]}"#, "labels as a list"),
        (
            r#"{"max_uses": 1, "labels": {"pool": 1}}"#,
            "a non-string label",
        ),
        (
            r#"{"max_uses": 1, "labels": "pool=a"}"#,
            "labels as a string",
        ),
        (r#"{"max_uses": 1, "expires_at": 1}"#, "an unknown field"),
        (r#"{"max_uses": 1"#, "truncated JSON"),
        ("", "an empty body"),
    ];
    let admin = server.admin_token.clone();
    for (body, what) in bad {
        let (status, reply) = server
            .post_raw(TOKENS, Some(&admin), "application/json", body.to_owned())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {reply}");
        assert_eq!(error_code(&reply), "bad_request", "{what}");
    }
    assert_eq!(list(&server).await, Vec::<Value>::new(), "nothing issued");

    // The bounds themselves are accepted; the ttl defaults to an hour.
    for (body, max_uses, ttl_ms) in [
        (
            json!({ "max_uses": 10_000, "ttl_secs": 604_800 }),
            10_000,
            604_800_000,
        ),
        (json!({ "max_uses": 1, "ttl_secs": 1 }), 1, 1_000),
        (json!({ "max_uses": 1 }), 1, 3_600_000),
    ] {
        let token = issue(&server, body.clone()).await;
        assert_eq!(token["max_uses"], max_uses, "{body}");
        let lifetime = token["expires_at"].as_i64().expect("expires_at")
            - token["created_at"].as_i64().expect("created_at");
        assert!(
            (ttl_ms - 1_000..=ttl_ms).contains(&lifetime),
            "{body}: lifetime {lifetime} ms"
        );
    }
    server.shutdown().await;
}

async fn enrolment_admits_the_key_with_the_token_labels(db: TestDb) {
    let server = TestServer::start(db).await;
    let created = issue(
        &server,
        json!({ "max_uses": 2, "ttl_secs": 900, "labels": { "pool": "compose" } }),
    )
    .await;
    let (id, secret) = (id_of(&created), secret_of(&created));
    assert!(secret.starts_with("bfenrol_"), "{created}");
    assert_eq!(
        (&created["uses"], &created["usable"], &created["revoked_at"]),
        (&json!(0), &json!(true), &Value::Null)
    );
    assert_eq!(created["labels"], json!({ "pool": "compose" }));

    let key = TestKey::generate("compose-1");
    let (status, body) = enrol(&server, &secret, &key).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["enrolment_token"], id);
    let builder = &body["builder"];
    assert_eq!(builder["name"], "compose-1");
    assert_eq!(builder["fingerprint"], key.fingerprint.as_str());
    assert_eq!(builder["enabled"], true);
    assert_eq!(builder["labels"], json!({ "pool": "compose" }));

    let builder_id = builder["id"].as_i64().expect("builder id");
    let stored = server.get_ok(&format!("/builders/{builder_id}")).await;
    assert_eq!(stored["fingerprint"], key.fingerprint.as_str());
    assert_eq!(stored["enabled"], true);
    assert_eq!(stored["labels"], json!({ "pool": "compose" }));

    // The list counts the use and never shows the secret again.
    let (status, raw) = {
        let reply = call(
            &server,
            Method::GET,
            TOKENS,
            Some(&server.admin_token),
            None,
        )
        .await;
        (reply.status, reply.body.to_string())
    };
    assert_eq!(status, StatusCode::OK);
    assert!(!raw.contains(&secret[8..]), "the secret leaked: {raw}");
    let token = listed(&server, id).await;
    assert!(token.get("token").is_none() && token.get("token_hash").is_none());
    assert_eq!(
        (&token["uses"], &token["usable"]),
        (&json!(1), &json!(true))
    );
    assert!(token["last_used_at"].as_i64().is_some(), "{token}");
    server.shutdown().await;
}

async fn unusable_tokens_all_get_the_same_401(db: TestDb) {
    let server = TestServer::start(db).await;
    // Issued first with a one-second ttl, so it runs out while the others are set up.
    let expired = issue(&server, json!({ "max_uses": 5, "ttl_secs": 1 })).await;
    let revoked = issue(&server, json!({ "max_uses": 5 })).await;
    let reply = revoke(&server, id_of(&revoked)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let exhausted = issue(&server, json!({ "max_uses": 1 })).await;
    let (status, body) = enrol(&server, &secret_of(&exhausted), &TestKey::generate("first")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    wait_unusable(&server, id_of(&expired)).await;

    let key = TestKey::generate("hopeful");
    let presented = [
        (secret_of(&expired), "expired"),
        (secret_of(&revoked), "revoked"),
        (secret_of(&exhausted), "used up"),
        (format!("{}x", secret_of(&exhausted)), "a suffixed secret"),
        (format!("bfenrol_{}", "0".repeat(64)), "unknown"),
        ("not-a-token".to_owned(), "garbage"),
        (String::new(), "empty"),
    ];
    let mut answers = BTreeSet::new();
    for (token, what) in &presented {
        let (status, body) = enrol(&server, token, &key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(error_code(&body), "unauthorized", "{what}");
        answers.insert(body.to_string());
    }
    assert_eq!(
        answers.len(),
        1,
        "one answer for every refusal: {answers:?}"
    );

    assert_eq!(builder_names(&server).await, names(&["first"]));
    for (token, uses) in [(&expired, 0), (&revoked, 0), (&exhausted, 1)] {
        let listed = listed(&server, id_of(token)).await;
        assert_eq!(listed["uses"], uses, "{listed}");
        assert_eq!(listed["usable"], false, "{listed}");
    }
    server.shutdown().await;
}

async fn admitted_keys_taken_names_and_bad_input_are_refused(db: TestDb) {
    let server = TestServer::start(db).await;
    let created = issue(&server, json!({ "max_uses": 3 })).await;
    let (id, secret) = (id_of(&created), secret_of(&created));
    let key = TestKey::generate("restarting");
    let (status, body) = enrol(&server, &secret, &key).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A restarted builder presents its key again: 409, with or without a valid token.
    for token in [secret.as_str(), "bfenrol_garbage"] {
        let (status, body) = enrol(&server, token, &key).await;
        assert_eq!(status, StatusCode::CONFLICT, "{token}: {body}");
        assert_eq!(error_code(&body), "conflict");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(key.fingerprint.as_str())),
            "{body}"
        );
    }
    // Another key under the taken name: 409 as well.
    let other = TestKey::generate("other");
    let (status, body) = enrol_as(&server, &secret, "restarting", &other.public_openssh).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "conflict");

    let bad = [
        json!({ "token": secret, "name": "has space", "public_key": other.public_openssh }),
        json!({ "token": secret, "name": ".hidden", "public_key": other.public_openssh }),
        json!({ "token": secret, "name": "", "public_key": other.public_openssh }),
        json!({ "token": secret, "name": "x".repeat(65), "public_key": other.public_openssh }),
        json!({ "token": secret, "name": "other", "public_key": "ssh-ed25519 AAAAnope" }),
        json!({ "token": secret, "name": "other", "public_key": "" }),
        json!({ "token": secret, "name": "other" }),
        json!({ "token": secret, "name": "other", "public_key": other.public_openssh, "labels": {} }),
    ];
    for body in bad {
        let (status, reply) = server.post("/enrol", None, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(error_code(&reply), "bad_request", "{body}");
    }

    assert_eq!(
        listed(&server, id).await["uses"],
        1,
        "refusals spend no use"
    );
    assert_eq!(builder_names(&server).await, names(&["restarting"]));
    server.shutdown().await;
}

async fn revoking_is_idempotent_and_keeps_enrolled_builders(db: TestDb) {
    let server = TestServer::start(db).await;
    let created = issue(&server, json!({ "max_uses": 3 })).await;
    let id = id_of(&created);
    let key = TestKey::generate("kept");
    let (status, body) = enrol(&server, &secret_of(&created), &key).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let builder_id = body["builder"]["id"].as_i64().expect("builder id");

    let first = revoke(&server, id).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(id_of(&first.body), id);
    assert_eq!(first.body["usable"], false);
    assert_eq!(first.body["uses"], 1);
    let revoked_at = first.body["revoked_at"].as_i64().expect("revoked_at");

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = revoke(&server, id).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(
        second.body["revoked_at"], revoked_at,
        "first revocation kept"
    );
    assert_eq!(listed(&server, id).await, second.body);

    let missing = revoke(&server, id + 1000).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
    assert_eq!(error_code(&missing.body), "not_found");
    for bad in ["abc", "-x", "1.5"] {
        let reply = revoke(&server, bad).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.body
        );
        assert_eq!(error_code(&reply.body), "bad_request");
    }

    let builder = server.get_ok(&format!("/builders/{builder_id}")).await;
    assert_eq!(builder["enabled"], true, "{builder}");
    server.shutdown().await;
}

async fn token_list_reports_uses_and_usability(db: TestDb) {
    let server = TestServer::start(db).await;
    let expired = id_of(&issue(&server, json!({ "max_uses": 2, "ttl_secs": 1 })).await);
    let fresh = id_of(&issue(&server, json!({ "max_uses": 3, "labels": { "a": "b" } })).await);
    let half = issue(&server, json!({ "max_uses": 2 })).await;
    let (status, _) = enrol(&server, &secret_of(&half), &TestKey::generate("h1")).await;
    assert_eq!(status, StatusCode::CREATED);
    let spent = issue(&server, json!({ "max_uses": 1 })).await;
    let (status, _) = enrol(&server, &secret_of(&spent), &TestKey::generate("s1")).await;
    assert_eq!(status, StatusCode::CREATED);
    let revoked = id_of(&issue(&server, json!({ "max_uses": 4 })).await);
    assert_eq!(revoke(&server, revoked).await.status, StatusCode::OK);
    wait_unusable(&server, expired).await;

    let tokens = list(&server).await;
    let ids: Vec<i64> = tokens.iter().map(id_of).collect();
    let (half, spent) = (id_of(&half), id_of(&spent));
    assert_eq!(
        ids,
        vec![revoked, spent, half, fresh, expired],
        "newest first"
    );

    let expected_fields: BTreeSet<&str> = [
        "id",
        "labels",
        "max_uses",
        "uses",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "usable",
    ]
    .into();
    let now = wall_clock_ms();
    for token in &tokens {
        let fields: BTreeSet<&str> = token
            .as_object()
            .expect("a token object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, expected_fields, "{token}");
        let (uses, max_uses) = (token["uses"].as_i64(), token["max_uses"].as_i64());
        let consistent = token["revoked_at"].is_null()
            && uses < max_uses
            && token["expires_at"].as_i64().expect("expires_at") > now;
        assert_eq!(token["usable"], consistent, "{token}");
    }
    let by_id = |id: i64| tokens.iter().find(|t| id_of(t) == id).expect("listed");
    // (uses, max_uses, usable, revoked, used at least once)
    let summary = |id: i64| {
        let t = by_id(id);
        (
            t["uses"].as_i64().expect("uses"),
            t["max_uses"].as_i64().expect("max_uses"),
            t["usable"].as_bool().expect("usable"),
            t["revoked_at"].as_i64().is_some(),
            t["last_used_at"].as_i64().is_some(),
        )
    };
    assert_eq!(summary(fresh), (0, 3, true, false, false));
    assert_eq!(summary(half), (1, 2, true, false, true));
    assert_eq!(summary(spent), (1, 1, false, false, true));
    assert_eq!(summary(revoked), (0, 4, false, true, false));
    assert_eq!(summary(expired), (0, 2, false, false, false));
    assert_eq!(by_id(fresh)["labels"], json!({ "a": "b" }));
    server.shutdown().await;
}

const RACING_KEYS: usize = 12;
const RACE_MAX_USES: usize = 3;

async fn concurrent_enrolments_admit_exactly_max_uses(db: TestDb) {
    let server = TestServer::start(db).await;
    let created = issue(&server, json!({ "max_uses": RACE_MAX_USES })).await;
    let secret = secret_of(&created);
    let keys: Vec<TestKey> = (0..RACING_KEYS)
        .map(|i| TestKey::generate(&format!("racer-{i}")))
        .collect();
    let replies =
        futures_util::future::join_all(keys.iter().map(|key| enrol(&server, &secret, key))).await;
    let mut admitted = BTreeSet::new();
    for ((status, body), key) in replies.iter().zip(&keys) {
        match *status {
            StatusCode::CREATED => {
                admitted.insert(key.name.clone());
            }
            StatusCode::UNAUTHORIZED => assert_eq!(error_code(body), "unauthorized"),
            other => panic!("{}: unexpected {other}: {body}", key.name),
        }
    }
    assert_eq!(admitted.len(), RACE_MAX_USES, "{admitted:?}");
    assert_eq!(builder_names(&server).await, admitted);
    let token = listed(&server, id_of(&created)).await;
    assert_eq!(token["uses"], RACE_MAX_USES);
    assert_eq!(token["usable"], false);
    server.shutdown().await;
}

async fn enrolled_ssh_keygen_key_authenticates_over_websocket(db: TestDb) {
    let server = TestServer::start(db).await;
    let created = issue(&server, json!({ "max_uses": 1 })).await;
    let key = TestKey::generate("ws-enrolled");

    // Before enrolment the backend does not know the key.
    let mut client = BuilderClient::connect(&server.ws_url()).await;
    client.hello(&key);
    client.expect_auth_rejected(ErrorCode::UnknownBuilder).await;

    let (status, body) = enrol(&server, &secret_of(&created), &key).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let builder_id = body["builder"]["id"].as_i64().expect("builder id");

    let client = BuilderClient::connect_ready(&server.ws_url(), &key).await;
    let accepted = client.accepted.clone().expect("auth accepted");
    assert_eq!(accepted.builder_id, builder_id);
    wait_connected(&server, &["ws-enrolled"]).await;

    // A key refused enrolment (the token is used up) stays unknown.
    let stranger = TestKey::generate("ws-stranger");
    let (status, _) = enrol(&server, &secret_of(&created), &stranger).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut refused = BuilderClient::connect(&server.ws_url()).await;
    refused.hello(&stranger);
    refused
        .expect_auth_rejected(ErrorCode::UnknownBuilder)
        .await;

    client.close().await;
    server.shutdown().await;
}

/// What `buildfleet-builder run --enrol-token` does before it connects.
async fn builder_enrols_itself_then_connects(db: TestDb) {
    let server = TestServer::start(db).await;
    let created = issue(
        &server,
        json!({ "max_uses": 1, "labels": { "pool": "self" } }),
    )
    .await;
    let (id, secret) = (id_of(&created), secret_of(&created));
    let state = tempfile::tempdir().expect("builder state dir");
    let backend_url = format!("ws://{}", server.addr);
    let config_for = |name: &str| {
        BuilderConfig::new(
            &backend_url,
            state.path().join(name).join("key"),
            name,
            state.path().join(name).join("work"),
        )
        .expect("builder config")
    };

    // No key yet: it is generated, then enrolled.
    let config = config_for("self-enrolled");
    assert!(!config.key_path.exists());
    let fingerprint = match builder_enrol(&config, &secret).await {
        Ok(Enrolment::Admitted { fingerprint }) => fingerprint,
        other => panic!("expected Admitted, got {other:?}"),
    };
    assert!(config.key_path.exists(), "the key was written");
    let listed_builders = server.get_ok("/builders").await;
    let admitted = &listed_builders["builders"][0];
    assert_eq!(admitted["fingerprint"], fingerprint.as_str());
    assert_eq!(admitted["labels"], json!({ "pool": "self" }));

    // A restart keeps the key: accepted as admitted though the token is used up, and
    // after it is revoked, with no valid token at all.
    match builder_enrol(&config, &secret).await {
        Ok(Enrolment::AlreadyAdmitted { fingerprint: again }) => assert_eq!(again, fingerprint),
        other => panic!("used-up token: expected AlreadyAdmitted, got {other:?}"),
    }
    assert_eq!(revoke(&server, id).await.status, StatusCode::OK);
    match builder_enrol(&config, "bfenrol_garbage").await {
        Ok(Enrolment::AlreadyAdmitted { fingerprint: again }) => assert_eq!(again, fingerprint),
        other => panic!("no valid token: expected AlreadyAdmitted, got {other:?}"),
    }
    assert_eq!(
        listed(&server, id).await["uses"],
        1,
        "restarts spend no use"
    );

    // A new builder with the spent token is refused; one with a taken name too.
    let late = config_for("latecomer");
    let err = builder_enrol(&late, &secret)
        .await
        .expect_err("token spent");
    assert!(matches!(err, EnrolError::TokenRefused), "{err}");
    let mut clash = config_for("clash");
    clash.name = "self-enrolled".into();
    let err = builder_enrol(&clash, "any").await.expect_err("name taken");
    assert!(
        matches!(err, EnrolError::Refused { status: 409, .. }),
        "{err}"
    );
    assert_eq!(builder_names(&server).await, names(&["self-enrolled"]));

    // The enrolled builder connects with its generated key.
    let builder = buildfleet_builder::start(config)
        .await
        .expect("start the builder");
    assert_eq!(builder.fingerprint(), &fingerprint);
    wait_connected(&server, &["self-enrolled"]).await;
    builder.cancel();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), builder.wait()).await;
    assert!(stopped.is_ok(), "the builder stops when cancelled");
    server.shutdown().await;
}
