//! `GET /v1/stats` and `ghostline-server stats`: acceptance, cache hit rate and latency
//! percentiles since a time, overall and by language, editor and key, computed from the
//! telemetry store. An event without a language, editor or key takes its completion's.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::store::{Store, Val};

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// One group's figures.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Figures {
    pub completions: u64,
    pub cache_hits: u64,
    pub cache_hit_rate: Option<f64>,
    pub shown: u64,
    pub accepted: u64,
    pub partially_accepted: u64,
    pub rejected: u64,
    /// (accepted + partially accepted) / shown.
    pub acceptance_rate: Option<f64>,
    /// Partially accepted among all acceptances.
    pub partial_accept_share: Option<f64>,
    pub ttft_ms: Percentiles,
    pub total_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub since: i64,
    pub until: i64,
    pub overall: Figures,
    pub by_language: BTreeMap<String, Figures>,
    pub by_editor: BTreeMap<String, Figures>,
    pub by_key: BTreeMap<String, Figures>,
}

#[derive(Default)]
struct Acc {
    completions: u64,
    hits: u64,
    kinds: [u64; 4],
    ttft: Vec<f64>,
    total: Vec<f64>,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| (a as f64 / b as f64 * 10_000.0).round() / 10_000.0)
}

pub(crate) fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles { p50: Some(at(0.5)), p90: Some(at(0.9)), p99: Some(at(0.99)) }
}

impl Acc {
    fn finish(self) -> Figures {
        let [shown, accepted, partial, rejected] = self.kinds;
        Figures {
            completions: self.completions,
            cache_hits: self.hits,
            cache_hit_rate: ratio(self.hits, self.completions),
            shown,
            accepted,
            partially_accepted: partial,
            rejected,
            acceptance_rate: ratio(accepted + partial, shown),
            partial_accept_share: ratio(partial, accepted + partial),
            ttft_ms: percentiles(self.ttft),
            total_ms: percentiles(self.total),
        }
    }
}

const UNKNOWN: &str = "unknown";

/// Figures since `since_ms` (unix ms).
pub fn report(store: &mut Store, since_ms: i64) -> anyhow::Result<Report> {
    let since = Val::Int(Some(since_ms));
    let comps = store.query(
        "SELECT id, key_name, language, editor, ttft_ms, total_ms, cache FROM completions WHERE created_ms >= ?1",
        std::slice::from_ref(&since),
    )?;
    let events = store.query(
        "SELECT completion_id, kind, language, editor, key_name FROM telemetry_events WHERE received_ms >= ?1",
        std::slice::from_ref(&since),
    )?;
    let label = |v: &Val| v.text().unwrap_or_else(|| UNKNOWN.into());
    let mut overall = Acc::default();
    let mut groups: [HashMap<String, Acc>; 3] = Default::default();
    let mut by_id: HashMap<String, [String; 3]> = HashMap::new();
    for r in &comps {
        let dims = [label(&r[2]), label(&r[3]), label(&r[1])];
        let hit = matches!(r[6].text().as_deref(), Some("hit" | "typeahead"));
        let (ttft, total) = (r[4].real().unwrap_or(0.0), r[5].real().unwrap_or(0.0));
        for acc in std::iter::once(&mut overall)
            .chain(groups.iter_mut().zip(&dims).map(|(g, d)| g.entry(d.clone()).or_default()))
        {
            acc.completions += 1;
            acc.hits += hit as u64;
            acc.ttft.push(ttft);
            acc.total.push(total);
        }
        if let Some(id) = r[0].text() {
            by_id.insert(id, dims);
        }
    }
    for r in &events {
        let k = match r[1].text().as_deref() {
            Some("shown") => 0,
            Some("accepted") => 1,
            Some("partially_accepted") => 2,
            Some("rejected") => 3,
            _ => continue,
        };
        let from = r[0].text().and_then(|id| by_id.get(&id).cloned());
        let dim = |i: usize, v: &Val| {
            v.text().or_else(|| from.as_ref().map(|d| d[i].clone())).unwrap_or_else(|| UNKNOWN.into())
        };
        let dims = [dim(0, &r[2]), dim(1, &r[3]), dim(2, &r[4])];
        overall.kinds[k] += 1;
        for (g, d) in groups.iter_mut().zip(dims) {
            g.entry(d).or_default().kinds[k] += 1;
        }
    }
    let [lang, editor, key] = groups.map(|g| g.into_iter().map(|(k, a)| (k, a.finish())).collect());
    Ok(Report {
        since: since_ms / 1000,
        until: crate::ingest::unix_ms() / 1000,
        overall: overall.finish(),
        by_language: lang,
        by_editor: editor,
        by_key: key,
    })
}

/// Parses `since`: unix seconds, or an age like `90s`, `30m`, `24h`, `7d`. Returns unix ms.
pub fn parse_since(s: &str, now_ms: i64) -> Option<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return (secs >= 0).then(|| secs.saturating_mul(1000));
    }
    let (num, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = num.parse().ok().filter(|n| *n >= 0)?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(now_ms - secs.saturating_mul(1000))
}

/// The report as a terminal table.
pub fn render(r: &Report) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0}"));
    let mut out = format!("since {} (unix s)\n", r.since);
    out.push_str(&format!(
        "{:<10} {:<20} {:>11} {:>7} {:>9} {:>9} {:>9} {:>14} {:>14}\n",
        "GROUP", "NAME", "COMPLETIONS", "SHOWN", "ACCEPTED", "PARTIAL", "CACHE HIT", "TTFT p50/p90", "TOTAL p50/p90"
    ));
    let mut row = |group: &str, name: &str, f: &Figures| {
        out.push_str(&format!(
            "{:<10} {:<20} {:>11} {:>7} {:>9} {:>9} {:>9} {:>14} {:>14}\n",
            group,
            name,
            f.completions,
            f.shown,
            pct(f.acceptance_rate),
            pct(f.partial_accept_share),
            pct(f.cache_hit_rate),
            format!("{}/{}", ms(f.ttft_ms.p50), ms(f.ttft_ms.p90)),
            format!("{}/{}", ms(f.total_ms.p50), ms(f.total_ms.p90)),
        ))
    };
    row("all", "", &r.overall);
    for (g, m) in [("language", &r.by_language), ("editor", &r.by_editor), ("key", &r.by_key)] {
        for (name, f) in m {
            row(g, name, f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_unix_seconds_or_an_age() {
        let now = 1_000_000_000;
        assert_eq!(parse_since("1700", now), Some(1_700_000));
        assert_eq!(parse_since("90s", now), Some(now - 90_000));
        assert_eq!(parse_since("2h", now), Some(now - 7_200_000));
        assert_eq!(parse_since("7d", now), Some(now - 604_800_000));
        for bad in ["", "x", "-5", "5w", "h"] {
            assert_eq!(parse_since(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99), (Some(50.0), Some(90.0), Some(99.0)));
        assert_eq!(percentiles(vec![]).p50, None);
    }
}
