//! The figures behind the dashboard, from the telemetry store: per time bucket and per language,
//! editor and key. Counting is done by the database (`GROUP BY` over bucket and dimensions);
//! only the latency columns of the completions in range come back row by row, for percentiles.
//! An event without a language, editor or key takes its completion's, as in `/v1/stats`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::stats::{percentiles, Percentiles};
use crate::store::{Store, Val};

/// The label of a missing language, editor or key.
pub const UNKNOWN: &str = "unknown";

/// At most this many buckets in one answer.
pub const MAX_BUCKETS: i64 = 2_000;

/// What to report: `[since_ms, until_ms)` in buckets of `bucket_ms`, optionally one language,
/// editor and key (`UNKNOWN` selects the events that have none).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub since_ms: i64,
    pub until_ms: i64,
    pub bucket_ms: i64,
    pub language: Option<String>,
    pub editor: Option<String>,
    pub key: Option<String>,
}

impl Window {
    /// A window that ends now and starts `since_ms`, in hour buckets up to two days and day
    /// buckets beyond, unless `bucket` says (`hour`, `day`, `minute`).
    pub fn new(since_ms: i64, until_ms: i64, bucket: Option<&str>) -> Result<Window, String> {
        if since_ms >= until_ms {
            return Err("the range must start before now".into());
        }
        let bucket_ms = match bucket.unwrap_or("auto") {
            "minute" => 60_000,
            "hour" => 3_600_000,
            "day" => 86_400_000,
            "auto" if until_ms - since_ms <= 2 * 86_400_000 => 3_600_000,
            "auto" => 86_400_000,
            other => return Err(format!("bucket {other:?}: use minute, hour, day or auto")),
        };
        let w = Window { since_ms, until_ms, bucket_ms, language: None, editor: None, key: None };
        if w.buckets() > MAX_BUCKETS {
            return Err(format!(
                "{} buckets of {} s in that range; at most {MAX_BUCKETS} (choose a larger bucket)",
                w.buckets(),
                bucket_ms / 1000
            ));
        }
        Ok(w)
    }

    fn first(&self) -> i64 {
        self.since_ms.div_euclid(self.bucket_ms)
    }

    fn last(&self) -> i64 {
        (self.until_ms - 1).div_euclid(self.bucket_ms)
    }

    fn buckets(&self) -> i64 {
        self.last() - self.first() + 1
    }

    /// Whether a (language, editor, key) passes the filters.
    fn keeps(&self, dims: &[String; 3]) -> bool {
        [&self.language, &self.editor, &self.key].iter().zip(dims).all(|(f, d)| f.as_ref().is_none_or(|f| f == d))
    }
}

/// Counts of one bucket or one group.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Counts {
    pub completions: u64,
    pub response_cache_hits: u64,
    pub typeahead_hits: u64,
    pub shown: u64,
    pub accepted: u64,
    pub partially_accepted: u64,
    pub rejected: u64,
    pub accepted_chars: u64,
}

impl Counts {
    fn add_completions(&mut self, cache: &str, n: u64) {
        self.completions += n;
        match cache {
            "hit" => self.response_cache_hits += n,
            "typeahead" => self.typeahead_hits += n,
            _ => {}
        }
    }

    fn add_events(&mut self, kind: &str, n: u64, chars: u64) {
        match kind {
            "shown" => self.shown += n,
            "accepted" => {
                self.accepted += n;
                self.accepted_chars += chars;
            }
            "partially_accepted" => {
                self.partially_accepted += n;
                self.accepted_chars += chars;
            }
            "rejected" => self.rejected += n,
            _ => {}
        }
    }

    fn rates(self) -> Rated {
        let ratio = |a: u64, b: u64| (b > 0).then(|| (a as f64 / b as f64 * 10_000.0).round() / 10_000.0);
        Rated {
            acceptance_rate: ratio(self.accepted + self.partially_accepted, self.shown),
            response_cache_hit_rate: ratio(self.response_cache_hits, self.completions),
            typeahead_hit_rate: ratio(self.typeahead_hits, self.completions),
            counts: self,
        }
    }
}

/// Counts with the rates derived from them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rated {
    #[serde(flatten)]
    pub counts: Counts,
    /// (accepted + partially accepted) / shown.
    pub acceptance_rate: Option<f64>,
    pub response_cache_hit_rate: Option<f64>,
    pub typeahead_hit_rate: Option<f64>,
}

/// One time bucket.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// Start of the bucket, unix ms.
    pub t: i64,
    #[serde(flatten)]
    pub figures: Rated,
    pub ttft_ms: Percentiles,
    pub total_ms: Percentiles,
}

/// One language, editor or key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    pub name: String,
    #[serde(flatten)]
    pub figures: Rated,
}

/// Everything the page draws but the live gauges and the key list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub since_ms: i64,
    pub until_ms: i64,
    pub bucket_ms: i64,
    pub totals: Rated,
    pub ttft_ms: Percentiles,
    pub total_ms: Percentiles,
    pub series: Vec<Bucket>,
    pub by_language: Vec<Group>,
    pub by_editor: Vec<Group>,
    pub by_key: Vec<Group>,
    /// Every language, editor and key seen in the range, filters aside: what the filters offer.
    pub seen: Seen,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Seen {
    pub languages: BTreeSet<String>,
    pub editors: BTreeSet<String>,
    pub keys: BTreeSet<String>,
}

fn label(v: &Val) -> String {
    v.text().unwrap_or_else(|| UNKNOWN.into())
}

fn count(v: &Val) -> u64 {
    v.int().map_or(0, |n| n.max(0) as u64)
}

/// The figures of `w`.
pub fn report(store: &mut Store, w: &Window) -> anyhow::Result<Report> {
    let range = [Val::Int(Some(w.since_ms)), Val::Int(Some(w.until_ms)), Val::Int(Some(w.bucket_ms))];
    let completions = store.query(
        "SELECT created_ms / ?3, language, editor, key_name, cache, COUNT(*) FROM completions \
         WHERE created_ms >= ?1 AND created_ms < ?2 GROUP BY 1, 2, 3, 4, 5",
        &range,
    )?;
    // The language server sends language and editor with each event and the server adds the
    // key, so the completion is looked up only for the few events that lack one (a scalar
    // subquery that COALESCE evaluates only then), not joined for every event.
    let events = store.query(
        "SELECT e.received_ms / ?3, e.kind, \
         COALESCE(e.language, (SELECT c.language FROM completions c WHERE c.id = e.completion_id)), \
         COALESCE(e.editor, (SELECT c.editor FROM completions c WHERE c.id = e.completion_id)), \
         COALESCE(e.key_name, (SELECT c.key_name FROM completions c WHERE c.id = e.completion_id)), \
         COUNT(*), CAST(SUM(COALESCE(e.accepted_chars, 0)) AS BIGINT) \
         FROM telemetry_events e WHERE e.received_ms >= ?1 AND e.received_ms < ?2 GROUP BY 1, 2, 3, 4, 5",
        &range,
    )?;

    let mut seen = Seen::default();
    let mut totals = Counts::default();
    let mut series: BTreeMap<i64, Counts> = (w.first()..=w.last()).map(|b| (b, Counts::default())).collect();
    let mut groups: [BTreeMap<String, Counts>; 3] = Default::default();
    let mut tally = |bucket: &Val, dims: [String; 3], add: &dyn Fn(&mut Counts)| {
        seen.languages.insert(dims[0].clone());
        seen.editors.insert(dims[1].clone());
        seen.keys.insert(dims[2].clone());
        if !w.keeps(&dims) {
            return;
        }
        add(&mut totals);
        if let Some(c) = bucket.int().and_then(|b| series.get_mut(&b)) {
            add(c);
        }
        for (g, d) in groups.iter_mut().zip(dims) {
            add(g.entry(d).or_default());
        }
    };
    for r in &completions {
        let (cache, n) = (r[4].text().unwrap_or_default(), count(&r[5]));
        tally(&r[0], [label(&r[1]), label(&r[2]), label(&r[3])], &|c| c.add_completions(&cache, n));
    }
    for r in &events {
        let (kind, n, chars) = (r[1].text().unwrap_or_default(), count(&r[5]), count(&r[6]));
        tally(&r[0], [label(&r[2]), label(&r[3]), label(&r[4])], &|c| c.add_events(&kind, n, chars));
    }

    let (mut latency, ttft_all, total_all) = latencies(store, w, &range)?;
    let series = series
        .into_iter()
        .map(|(b, c)| {
            let (ttft, total) = latency.remove(&b).unwrap_or_default();
            Bucket { t: b * w.bucket_ms, figures: c.rates(), ttft_ms: percentiles(ttft), total_ms: percentiles(total) }
        })
        .collect();
    let [by_language, by_editor, by_key] = groups.map(|g| {
        let mut v: Vec<Group> = g.into_iter().map(|(name, c)| Group { name, figures: c.rates() }).collect();
        // Most shown first, then by name (the map's order), so the table leads with what matters.
        v.sort_by_key(|g| std::cmp::Reverse(g.figures.counts.shown));
        v
    });
    Ok(Report {
        since_ms: w.since_ms,
        until_ms: w.until_ms,
        bucket_ms: w.bucket_ms,
        totals: totals.rates(),
        ttft_ms: percentiles(ttft_all),
        total_ms: percentiles(total_all),
        series,
        by_language,
        by_editor,
        by_key,
        seen,
    })
}

type Latencies = (BTreeMap<i64, (Vec<f64>, Vec<f64>)>, Vec<f64>, Vec<f64>);

/// Time to first token and total time of the completions that pass the filters, per bucket and
/// in all. The filters go into the query, so only the rows wanted come back.
fn latencies(store: &mut Store, w: &Window, range: &[Val; 3]) -> anyhow::Result<Latencies> {
    let mut sql = String::from(
        "SELECT created_ms / ?3, ttft_ms, total_ms FROM completions WHERE created_ms >= ?1 AND created_ms < ?2",
    );
    let mut params = range.to_vec();
    for (col, f) in [("language", &w.language), ("editor", &w.editor), ("key_name", &w.key)] {
        match f.as_deref() {
            None => {}
            Some(UNKNOWN) => sql.push_str(&format!(" AND {col} IS NULL")),
            Some(v) => {
                params.push(Val::Text(Some(v.to_string())));
                sql.push_str(&format!(" AND {col} = ?{}", params.len()));
            }
        }
    }
    let mut per: BTreeMap<i64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let (mut ttft_all, mut total_all) = (Vec::new(), Vec::new());
    for r in store.query(&sql, &params)? {
        let (Some(b), Some(ttft), Some(total)) = (r[0].int(), r[1].real(), r[2].real()) else { continue };
        let e = per.entry(b).or_default();
        e.0.push(ttft);
        e.1.push(total);
        ttft_all.push(ttft);
        total_all.push(total);
    }
    Ok((per, ttft_all, total_all))
}

/// When each key last made a completion (unix ms), by name.
pub fn last_use(store: &mut Store) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows = store
        .query("SELECT key_name, MAX(created_ms) FROM completions WHERE key_name IS NOT NULL GROUP BY key_name", &[])?;
    Ok(rows.iter().filter_map(|r| Some((r[0].text()?, r[1].int()?))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DbTarget;

    const H: i64 = 3_600_000;

    fn store(tag: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("ghostline-dash-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&DbTarget::Sqlite(dir.join("g.db"))).unwrap(), dir)
    }

    fn completion(s: &mut Store, id: &str, at: i64, lang: Option<&str>, key: Option<&str>, cache: &str, ttft: f64) {
        let t = |v: Option<&str>| Val::Text(v.map(str::to_string));
        s.exec(
            "INSERT INTO completions (id, created_ms, key_name, language, editor, model, prompt_tokens, cached_tokens, \
             completion_tokens, queue_ms, ttft_ms, total_ms, cache) VALUES (?1, ?2, ?3, ?4, 'vscode', 'm', 1, 0, 1, 0, ?5, ?6, ?7)",
            &[t(Some(id)), Val::Int(Some(at)), t(key), t(lang), Val::Real(Some(ttft)), Val::Real(Some(ttft * 2.0)), t(Some(cache))],
        )
        .unwrap();
    }

    fn event(s: &mut Store, id: &str, of: &str, at: i64, kind: &str, chars: Option<i64>, lang: Option<&str>) {
        let t = |v: Option<&str>| Val::Text(v.map(str::to_string));
        s.exec(
            "INSERT INTO telemetry_events (event_id, completion_id, choice_index, kind, accepted_chars, language, received_ms) \
             VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6)",
            &[t(Some(id)), t(Some(of)), t(Some(kind)), Val::Int(chars), t(lang), Val::Int(Some(at))],
        )
        .unwrap();
    }

    #[test]
    fn windows_pick_buckets_and_refuse_too_many() {
        let w = Window::new(0, 24 * H, None).unwrap();
        assert_eq!((w.bucket_ms, w.buckets()), (H, 24));
        assert_eq!(Window::new(0, 7 * 24 * H, None).unwrap().bucket_ms, 24 * H);
        assert_eq!(Window::new(H / 2, 2 * H, Some("hour")).unwrap().buckets(), 2, "buckets align to the hour");
        assert!(Window::new(0, 90 * 24 * H, Some("minute")).unwrap_err().contains("at most"));
        assert!(Window::new(0, H, Some("week")).unwrap_err().contains("bucket"));
        assert!(Window::new(H, H, None).is_err());
    }

    #[test]
    fn counts_rates_and_latency_per_bucket_and_group_with_filters() {
        let (mut s, dir) = store("report");
        // Hour 0: two python completions (one a response-cache hit), hour 1: a rust one by bob
        // from the typed-ahead cache, and one outside the window.
        completion(&mut s, "c1", 10, Some("python"), Some("alice"), "miss", 100.0);
        completion(&mut s, "c2", 20, Some("python"), Some("alice"), "hit", 2.0);
        completion(&mut s, "c3", H + 5, Some("rust"), Some("bob"), "typeahead", 1.0);
        completion(&mut s, "old", -5, Some("rust"), Some("bob"), "miss", 9.0);
        event(&mut s, "e1", "c1", 30, "shown", None, None);
        event(&mut s, "e2", "c1", 40, "accepted", Some(12), None);
        event(&mut s, "e3", "c2", 50, "shown", None, None);
        event(&mut s, "e4", "c2", 60, "rejected", None, None);
        event(&mut s, "e5", "c3", H + 10, "shown", None, None);
        event(&mut s, "e6", "c3", H + 20, "partially_accepted", Some(5), Some("rust"));
        // An event whose completion is unknown here (another replica's, say): its own fields only.
        event(&mut s, "e7", "elsewhere", H + 30, "shown", None, None);

        let w = Window::new(0, 2 * H, Some("hour")).unwrap();
        let r = report(&mut s, &w).unwrap();
        let t = &r.totals;
        assert_eq!(
            (t.counts.completions, t.counts.shown, t.counts.accepted, t.counts.partially_accepted, t.counts.rejected),
            (3, 4, 1, 1, 1)
        );
        assert_eq!(t.counts.accepted_chars, 17);
        assert_eq!(t.acceptance_rate, Some(0.5));
        assert_eq!((t.counts.response_cache_hits, t.counts.typeahead_hits), (1, 1));
        assert_eq!(t.response_cache_hit_rate, Some(0.3333));
        assert_eq!(r.series.len(), 2);
        assert_eq!((r.series[0].t, r.series[1].t), (0, H));
        assert_eq!((r.series[0].figures.counts.shown, r.series[1].figures.counts.shown), (2, 2));
        assert_eq!(r.series[0].ttft_ms.p50, Some(2.0));
        assert_eq!(r.series[0].ttft_ms.p99, Some(100.0));
        assert_eq!(r.series[1].total_ms.p50, Some(2.0));
        assert_eq!(r.ttft_ms.p90, Some(100.0));
        let names = |g: &[Group]| g.iter().map(|g| (g.name.clone(), g.figures.counts.shown)).collect::<Vec<_>>();
        assert_eq!(names(&r.by_language), [("python".into(), 2), ("rust".into(), 1), (UNKNOWN.into(), 1)]);
        assert_eq!(r.by_key.iter().find(|g| g.name == "alice").unwrap().figures.acceptance_rate, Some(0.5));
        assert_eq!(r.seen.keys.iter().cloned().collect::<Vec<_>>(), ["alice", "bob", UNKNOWN]);

        // One language: the events and the latency rows of the others drop out; `seen` stays.
        let only = Window { language: Some("rust".into()), ..w.clone() };
        let r = report(&mut s, &only).unwrap();
        assert_eq!((r.totals.counts.completions, r.totals.counts.shown, r.totals.counts.accepted_chars), (1, 1, 5));
        assert_eq!(r.ttft_ms.p50, Some(1.0));
        assert_eq!(r.series[0].ttft_ms.p50, None);
        assert_eq!(r.by_language.len(), 1);
        assert!(r.seen.languages.contains("python"));
        let unknown = Window { language: Some(UNKNOWN.into()), ..w.clone() };
        assert_eq!(report(&mut s, &unknown).unwrap().totals.counts.shown, 1);
        let nobody = Window { key: Some("carol".into()), ..w };
        assert_eq!(report(&mut s, &nobody).unwrap().totals.counts, Counts::default());

        let last = last_use(&mut s).unwrap();
        assert_eq!((last["alice"], last["bob"]), (20, H + 5));
        std::fs::remove_dir_all(dir).ok();
    }
}
