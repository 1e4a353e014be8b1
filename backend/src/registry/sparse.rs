//! The sparse index protocol (RFC 2789): each crate's index file over HTTP, fetched with
//! its ETag so an unchanged crate costs a 304.

use std::time::Duration;

use awc::http::StatusCode;

use super::FollowError;

/// Index files and `config.json` are small; anything bigger is not an index.
const MAX_INDEX_FILE_BYTES: usize = 16 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Fetched {
    NotModified,
    NotFound,
    Body { text: String, etag: Option<String> },
}

/// GETs `url`, conditionally on `etag`.
pub async fn fetch(
    client: &awc::Client,
    url: &str,
    etag: Option<&str>,
) -> Result<Fetched, FollowError> {
    let mut request = client.get(url).timeout(FETCH_TIMEOUT);
    if let Some(etag) = etag {
        request = request.insert_header(("If-None-Match", etag));
    }
    let unreachable = |reason: String| FollowError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let mut response = request
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    match response.status() {
        StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
        // 404 and 410 both mean "no such crate"; a registry may answer either.
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(Fetched::NotFound),
        status if status.is_success() => {
            let etag = response
                .headers()
                .get("ETag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response
                .body()
                .limit(MAX_INDEX_FILE_BYTES)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| unreachable("the body is not UTF-8".into()))?;
            Ok(Fetched::Body { text, etag })
        }
        status => Err(unreachable(format!("HTTP {status}"))),
    }
}
