//! The team dashboard: `GET /dashboard` is one self-contained page (HTML, CSS and a script that
//! draws its charts as SVG; nothing fetched from elsewhere), and `GET /v1/dashboard` the JSON it
//! reads: the stored figures over a time range (`report`), what the engine holds now (the same
//! gauges `/metrics` shows) and the keys with their limits and last use, never a key itself.
//! The page is public; the data needs an admin key whenever the server has keys.

mod report;

use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::HttpError;
use crate::http::AppState;
use crate::keys::Principal;
use crate::store::Store;
pub use report::{Report, Window};

/// The page, compiled into the binary.
const PAGE: &str = include_str!("page.html");

pub const ADMIN_ONLY: &str =
    "the dashboard needs an admin key: make one with `ghostline-server keys add NAME --admin` and send it as Authorization: Bearer KEY";

/// Longest filter value accepted.
const MAX_FILTER: usize = 200;

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Everything the page needs is in it; it only talks to this server.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /v1/dashboard` query: `range` (an age like `24h`, `7d`, or unix seconds; default 24h),
/// `bucket` (`minute`, `hour`, `day`, `auto`), and filters `language`, `editor`, `key`
/// (`unknown` selects what has none).
#[derive(Debug, Default, Deserialize)]
pub struct DashboardQuery {
    range: Option<String>,
    bucket: Option<String>,
    language: Option<String>,
    editor: Option<String>,
    key: Option<String>,
}

/// What the engine holds now.
#[derive(Debug, Serialize, PartialEq)]
pub struct Live {
    pub kv_blocks_used: Option<f64>,
    pub prefix_cache_blocks: Option<f64>,
    pub queue_depth: Option<f64>,
    pub active_sequences: Option<f64>,
}

/// One key as the dashboard lists it.
#[derive(Debug, Serialize)]
pub struct KeyRow {
    pub name: String,
    pub admin: bool,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// The key's last completion, unix ms.
    pub last_used_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Dashboard {
    pub model: String,
    pub generated_ms: i64,
    #[serde(flatten)]
    pub report: Report,
    pub live: Live,
    pub keys: Vec<KeyRow>,
}

fn filter(v: Option<String>, name: &str) -> Result<Option<String>, HttpError> {
    match v.filter(|s| !s.is_empty()) {
        Some(s) if s.len() > MAX_FILTER => {
            Err(HttpError::invalid(format!("{name} is longer than {MAX_FILTER} bytes"), name))
        }
        v => Ok(v),
    }
}

/// The window a query asks for, ending at `now_ms`.
pub fn window(q: DashboardQuery, now_ms: i64) -> Result<Window, HttpError> {
    let since = crate::stats::parse_since(q.range.as_deref().unwrap_or("24h"), now_ms)
        .ok_or_else(|| HttpError::invalid("range must be an age like 1h, 24h, 7d or unix seconds", "range"))?;
    let mut w = Window::new(since, now_ms, q.bucket.as_deref()).map_err(|m| {
        let param = if m.starts_with("bucket") || m.contains("buckets") { "bucket" } else { "range" };
        HttpError::invalid(m, param)
    })?;
    w.language = filter(q.language, "language")?;
    w.editor = filter(q.editor, "editor")?;
    w.key = filter(q.key, "key")?;
    Ok(w)
}

/// A gauge's (or counter's) value in Prometheus' text format (summed over its label sets).
pub(crate) fn gauge(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

pub fn live(metrics: &str) -> Live {
    Live {
        kv_blocks_used: gauge(metrics, "ghostline_kv_blocks_used"),
        prefix_cache_blocks: gauge(metrics, "ghostline_prefix_cache_blocks"),
        queue_depth: gauge(metrics, "ghostline_queue_depth"),
        active_sequences: gauge(metrics, "ghostline_active_sequences"),
    }
}

pub async fn data(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<DashboardQuery>,
) -> Result<Response, HttpError> {
    if !who.may_administer() {
        return Err(HttpError::Forbidden(ADMIN_ONLY));
    }
    let now = crate::ingest::unix_ms();
    let w = window(q, now)?;
    let target = st.database.clone();
    let (report, keys) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Report, Vec<KeyRow>)> {
        let mut store = Store::open(&target)?;
        let report = report::report(&mut store, &w)?;
        let last = report::last_use(&mut store)?;
        let keys = crate::keys::list(&mut store)?
            .into_iter()
            .map(|k| KeyRow {
                last_used_ms: last.get(&k.name).copied(),
                name: k.name,
                admin: k.admin,
                requests_per_minute: k.requests_per_minute,
                tokens_per_minute: k.tokens_per_minute,
                created_at: k.created_at,
                revoked_at: k.revoked_at,
            })
            .collect();
        Ok((report, keys))
    })
    .await
    .map_err(|e| HttpError::Internal(e.to_string()))?
    .map_err(|e| HttpError::StatsUnavailable(e.to_string()))?;
    let body =
        Dashboard { model: st.model.name.clone(), generated_ms: now, report, live: live(&st.metrics.render()), keys };
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_become_windows_or_name_the_bad_field() {
        let now = 100 * 86_400_000;
        let w = window(DashboardQuery::default(), now).unwrap();
        assert_eq!((w.since_ms, w.bucket_ms), (now - 86_400_000, 3_600_000));
        let q = DashboardQuery {
            range: Some("7d".into()),
            language: Some("rust".into()),
            editor: Some(String::new()),
            ..Default::default()
        };
        let w = window(q, now).unwrap();
        assert_eq!((w.bucket_ms, w.language.as_deref(), w.editor.as_deref()), (86_400_000, Some("rust"), None));
        let bad = |q: DashboardQuery| match window(q, now) {
            Err(HttpError::Invalid { param, .. }) => param.unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(DashboardQuery { range: Some("soon".into()), ..Default::default() }), "range");
        assert_eq!(bad(DashboardQuery { bucket: Some("week".into()), ..Default::default() }), "bucket");
        assert_eq!(
            bad(DashboardQuery { range: Some("90d".into()), bucket: Some("minute".into()), ..Default::default() }),
            "bucket"
        );
        assert_eq!(bad(DashboardQuery { key: Some("k".repeat(500)), ..Default::default() }), "key");
    }

    #[test]
    fn gauges_come_from_the_metrics_text() {
        let text = "# TYPE ghostline_kv_blocks_used gauge\nghostline_kv_blocks_used 12\n\
                    ghostline_kv_blocks_used_extra 5\nghostline_queue_depth{model=\"m\"} 3\nghostline_queue_depth{model=\"n\"} 1\n";
        let l = live(text);
        assert_eq!((l.kv_blocks_used, l.queue_depth, l.active_sequences), (Some(12.0), Some(4.0), None));
    }
}
