//! The simulated round's workload and its figures, from what the watches saw. Pure.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{self, Summary};

/// What a run asks for, and so which nodes can hold its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Shape {
    /// 64 MiB and 16 MiB of disk: a pod of 100 MiB.
    Small,
    /// 1 GiB and 64 MiB of disk: 1,156 MiB.
    Medium,
    /// 8 GiB and 1 GiB of disk, the most a run may ask: 10,244 MiB, more than a standard
    /// simulated node has; only the large ones hold it.
    Large,
}

impl Shape {
    /// The shape of a tenant's `k`th run: 1 in 20 large, 6 in 20 medium, the rest small.
    pub fn of(k: usize) -> Shape {
        match k % 20 {
            0 => Shape::Large,
            1..=6 => Shape::Medium,
            _ => Shape::Small,
        }
    }

    /// `memory_mb` and `disk_mb`.
    pub fn limits(self) -> (u64, u64) {
        match self {
            Shape::Small => (64, 16),
            Shape::Medium => (1024, 64),
            Shape::Large => (8192, 1024),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shape::Small => "small",
            Shape::Medium => "medium",
            Shape::Large => "large",
        }
    }
}

/// The tenant of the `i`th run created: every other run is tenant 0's (a heavy tenant, half
/// of the load), the rest go round the other tenants. A queue that served runs in the order
/// they came would give tenant 0 half of the room; a fair one gives it its share.
pub fn tenant_of(i: usize, tenants: usize) -> usize {
    if tenants <= 1 || i.is_multiple_of(2) {
        0
    } else {
        1 + (i / 2) % (tenants - 1)
    }
}

/// One run as the round saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub tenant: usize,
    /// Its place among the tenant's runs, in the order the API server stored them.
    pub order: u64,
    pub created: Instant,
    /// Seen with a place in line: it waited for room.
    pub waited: bool,
    /// Its first pod seen (admitted), bound to a node, marked Running.
    pub admitted: Option<Instant>,
    pub bound: Option<Instant>,
    pub started: Option<Instant>,
}

/// The queue's order across tenants and within each.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Fairness {
    /// Runs admitted while every tenant had runs waiting for room: the window in which a
    /// fair queue gives each tenant the same share.
    pub window_admissions: usize,
    pub window_s: f64,
    /// The fewest and most admissions of a tenant in the window, as a fraction of an equal
    /// share (1.0 is exactly fair).
    pub min_share: Option<f64>,
    pub max_share: Option<f64>,
    /// The heavy tenant's (half of all runs) share of the window, as a fraction of an equal
    /// share: about 1 when fair, about tenants / 2 if runs went in the order they came.
    pub heavy_share: Option<f64>,
    /// Runs admitted before a run of their own tenant created earlier.
    pub overtakes: usize,
    /// The most places a run was admitted ahead of its tenant's order.
    pub max_overtake: usize,
    /// Created to admitted, of the heavy tenant's runs and of the others'.
    pub heavy_wait: Summary,
    pub light_wait: Summary,
}

pub fn fairness(runs: &[Seen], tenants: usize) -> Fairness {
    let waiting: Vec<&Seen> = runs.iter().filter(|r| r.waited).collect();
    let (window, window_s) = all_waiting_window(&waiting, tenants);
    let mut per_tenant = vec![0usize; tenants];
    for t in &window {
        per_tenant[*t] += 1;
    }
    let equal = window.len() as f64 / tenants.max(1) as f64;
    let share = |n: usize| (equal > 0.0).then(|| n as f64 / equal);
    let wait = |heavy: bool| {
        let samples: Vec<f64> = runs
            .iter()
            .filter(|r| (r.tenant == 0) == heavy)
            .filter_map(|r| {
                r.admitted
                    .map(|a| stats::ms(a.saturating_duration_since(r.created)))
            })
            .collect();
        Summary::of(&samples)
    };
    let (overtakes, max_overtake) = overtakes(runs, tenants);
    Fairness {
        window_admissions: window.len(),
        window_s,
        min_share: per_tenant.iter().min().and_then(|n| share(*n)),
        max_share: per_tenant.iter().max().and_then(|n| share(*n)),
        heavy_share: per_tenant.first().and_then(|n| share(*n)),
        overtakes,
        max_overtake,
        heavy_wait: wait(true),
        light_wait: wait(false),
    }
}

/// The tenants of the runs admitted while every tenant had one waiting (created, not yet
/// admitted), in order, and how long that lasted in all.
fn all_waiting_window(runs: &[&Seen], tenants: usize) -> (Vec<usize>, f64) {
    // (time, tenant, +1 created / -1 admitted); at one instant, arrivals first.
    let mut edges: Vec<(Instant, i8, usize)> = Vec::new();
    for r in runs {
        edges.push((r.created, 1, r.tenant));
        if let Some(a) = r.admitted {
            edges.push((a.max(r.created), -1, r.tenant));
        }
    }
    edges.sort_by_key(|(t, d, _)| (*t, -d));
    let mut open = vec![0usize; tenants];
    let mut all_open = 0;
    let mut since: Option<Instant> = None;
    let (mut window, mut span) = (Vec::new(), Duration::ZERO);
    for (t, d, tenant) in edges {
        if d < 0 {
            if all_open == tenants {
                window.push(tenant);
            }
            open[tenant] -= 1;
            if open[tenant] == 0 {
                all_open -= 1;
                span += since.take().map_or(Duration::ZERO, |s| t - s);
            }
        } else {
            open[tenant] += 1;
            if open[tenant] == 1 {
                all_open += 1;
                if all_open == tenants {
                    since = Some(t);
                }
            }
        }
    }
    (window, span.as_secs_f64())
}

/// Within each tenant: runs admitted before one of the tenant's created earlier, and the
/// most places one got ahead.
fn overtakes(runs: &[Seen], tenants: usize) -> (usize, usize) {
    let (mut count, mut most) = (0, 0);
    for tenant in 0..tenants {
        let mut mine: Vec<&Seen> = runs
            .iter()
            .filter(|r| r.tenant == tenant && r.admitted.is_some())
            .collect();
        mine.sort_by_key(|r| r.order);
        // Rank by creation; walk in admission order.
        let ranks: BTreeMap<u64, usize> =
            mine.iter().enumerate().map(|(i, r)| (r.order, i)).collect();
        mine.sort_by_key(|r| r.admitted);
        for (place, r) in mine.iter().enumerate() {
            let rank = ranks[&r.order];
            if place < rank {
                count += 1;
                most = most.max(rank - place);
            }
        }
    }
    (count, most)
}

/// Events per second between the 10th and the 90th percentile of their times (the ramp
/// and the tail left out).
pub fn saturated_rate(times: &[Instant]) -> Option<f64> {
    if times.len() < 10 {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort();
    let (lo, hi) = (sorted.len() / 10, sorted.len() * 9 / 10);
    let span = (sorted[hi] - sorted[lo]).as_secs_f64();
    (span > 0.0).then(|| (hi - lo) as f64 / span)
}

/// Latencies from one step to another, of the runs that reached both.
pub fn between(
    runs: &[Seen],
    from: impl Fn(&Seen) -> Option<Instant>,
    to: impl Fn(&Seen) -> Option<Instant>,
) -> Summary {
    let samples: Vec<f64> = runs
        .iter()
        .filter_map(|r| Some(stats::ms(to(r)?.saturating_duration_since(from(r)?))))
        .collect();
    Summary::of(&samples)
}

/// kube-apiserver's requests so far, by `VERB resource[/subresource]`, from its metrics
/// text (`apiserver_request_total`, every code and scope summed).
pub fn kube_requests(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let Ok(n) = value.trim().parse::<f64>() else {
            continue;
        };
        let sub = label("subresource");
        let resource = if sub.is_empty() {
            label("resource")
        } else {
            format!("{}/{sub}", label("resource"))
        };
        *out.entry(format!("{} {resource}", label("verb")))
            .or_insert(0.0) += n;
    }
    out
}

/// `after - before`, the counts that grew, each divided by `per`.
pub fn growth(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    per: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| (k, v / per.max(1) as f64))
        .collect()
}

/// The counts summed by their first word (the verb).
pub fn by_verb(counts: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in counts {
        let verb = k.split(' ').next().unwrap_or_default().to_string();
        *out.entry(verb).or_insert(0.0) += v;
    }
    out
}

/// The `n` largest counts as `2.00 POST pods, 1.00 PATCH pods/status`.
pub fn largest(counts: &BTreeMap<String, f64>, n: usize) -> String {
    let mut items: Vec<(&String, &f64)> = counts.iter().collect();
    items.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    items
        .iter()
        .take(n)
        .map(|(k, v)| format!("{v:.2} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tenant: usize, order: u64, created: u64, admitted: Option<u64>, t0: Instant) -> Seen {
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        Seen {
            tenant,
            order,
            created: at(created),
            waited: true,
            admitted: admitted.map(at),
            bound: None,
            started: None,
        }
    }

    #[test]
    fn half_the_runs_are_the_heavy_tenants_and_every_tenant_gets_every_shape() {
        let tenants: Vec<usize> = (0..40).map(|i| tenant_of(i, 20)).collect();
        assert_eq!(tenants.iter().filter(|t| **t == 0).count(), 20);
        assert_eq!(&tenants[..6], &[0, 1, 0, 2, 0, 3]);
        let shapes: Vec<Shape> = (0..20).map(Shape::of).collect();
        assert_eq!(shapes.iter().filter(|s| **s == Shape::Large).count(), 1);
        assert_eq!(shapes.iter().filter(|s| **s == Shape::Medium).count(), 6);
    }

    #[test]
    fn round_robin_gives_each_waiting_tenant_an_equal_share() {
        let t0 = Instant::now();
        // Tenant 0 made 6 runs, tenant 1 made 2, all at once; turns: 0 1 0 1 0 0 0 0.
        let mut runs = Vec::new();
        for (i, (tenant, order)) in [
            (0, 0),
            (1, 0),
            (0, 1),
            (1, 1),
            (0, 2),
            (0, 3),
            (0, 4),
            (0, 5),
        ]
        .into_iter()
        .enumerate()
        {
            runs.push(run(tenant, order, 0, Some(10 + i as u64 * 10), t0));
        }
        let f = fairness(&runs, 2);
        // While both waited (until tenant 1's last went): 0 1 0 1, two each.
        assert_eq!(f.window_admissions, 4);
        assert_eq!((f.min_share, f.max_share), (Some(1.0), Some(1.0)));
        assert_eq!(f.heavy_share, Some(1.0));
        assert_eq!((f.overtakes, f.max_overtake), (0, 0));
    }

    #[test]
    fn first_come_first_served_shows_as_the_heavy_tenants_larger_share() {
        let t0 = Instant::now();
        // Tenant 1's only run waits while tenant 0's three go first.
        let runs = vec![
            run(0, 0, 0, Some(10), t0),
            run(0, 1, 0, Some(20), t0),
            run(0, 2, 0, Some(30), t0),
            run(1, 0, 0, Some(40), t0),
            run(0, 3, 0, Some(50), t0),
        ];
        let f = fairness(&runs, 2);
        assert_eq!(f.window_admissions, 4);
        assert_eq!(f.heavy_share, Some(1.5));
        assert_eq!(f.min_share, Some(0.5));
    }

    #[test]
    fn a_run_admitted_ahead_of_its_tenants_earlier_run_is_an_overtake() {
        let t0 = Instant::now();
        let runs = vec![
            run(0, 0, 0, Some(30), t0),
            run(0, 1, 0, Some(10), t0),
            run(0, 2, 0, Some(20), t0),
            run(0, 3, 0, None, t0),
        ];
        assert_eq!(overtakes(&runs, 1), (2, 1));
    }

    #[test]
    fn runs_that_never_waited_for_room_make_no_window() {
        let t0 = Instant::now();
        let mut r = run(0, 0, 0, Some(5), t0);
        r.waited = false;
        let f = fairness(&[r], 1);
        assert_eq!((f.window_admissions, f.heavy_share), (0, None));
        assert_eq!(f.heavy_wait.n, 1);
    }

    #[test]
    fn kube_requests_are_summed_by_verb_and_resource_over_codes() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PATCH",version="v1"} 4
apiserver_request_total_other 3
"#;
        let counts = kube_requests(text);
        assert_eq!(counts["POST pods"], 8.0);
        assert_eq!(counts["PATCH pods/status"], 4.0);
        let before = BTreeMap::from([("POST pods".to_string(), 2.0)]);
        let grown = growth(&before, &counts, 2);
        assert_eq!(grown["POST pods"], 3.0);
        assert_eq!(by_verb(&grown)["PATCH"], 2.0);
        assert_eq!(largest(&grown, 1), "3.00 POST pods");
    }

    #[test]
    fn the_saturated_rate_leaves_out_the_ramp_and_the_tail() {
        let t0 = Instant::now();
        let times: Vec<Instant> = (0..100)
            .map(|i| t0 + Duration::from_millis(i * 100))
            .collect();
        let rate = saturated_rate(&times).unwrap();
        assert!((rate - 10.0).abs() < 0.01, "{rate}");
    }
}
