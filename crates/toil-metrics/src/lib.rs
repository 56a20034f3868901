//! Metrics of a Toil node: counters, gauges and histograms, rendered in the
//! Prometheus text exposition format by the admin endpoint.
//!
//! A [`Registry`] hands out `Arc` handles once (when a domain is loaded or a
//! listener starts); the hot path only touches atomics. No dependencies, no
//! global state: each node owns its registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency buckets in seconds, from 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A cumulative histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(), count: AtomicU64::new(0), sum_nanos: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

impl Metric {
    fn kind(&self) -> &'static str {
        match self {
            Metric::Counter(_) => "counter",
            Metric::Gauge(_) => "gauge",
            Metric::Histogram(_) => "histogram",
        }
    }
}

#[derive(Debug, Default)]
struct Family {
    help: &'static str,
    series: BTreeMap<String, Metric>,
}

/// The set of metrics of one node.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<&'static str, Family>>>,
}

/// Renders `{a="x",b="y"}` with Prometheus escaping.
fn label_string(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s.push('}');
    s
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn get_or_insert(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], make: impl FnOnce() -> Metric) -> Metric {
        let mut families = self.families.lock().expect("metrics lock");
        let family = families.entry(name).or_insert_with(|| Family { help, series: BTreeMap::new() });
        family.series.entry(label_string(labels)).or_insert_with(make).clone()
    }

    /// The counter `name{labels}`, created on first use.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Arc<Counter> {
        match self.get_or_insert(name, help, labels, || Metric::Counter(Arc::default())) {
            Metric::Counter(c) => c,
            other => panic!("metric {name} is a {}, not a counter", other.kind()),
        }
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Arc<Gauge> {
        match self.get_or_insert(name, help, labels, || Metric::Gauge(Arc::default())) {
            Metric::Gauge(g) => g,
            other => panic!("metric {name} is a {}, not a gauge", other.kind()),
        }
    }

    /// A latency histogram with [`LATENCY_BUCKETS`].
    pub fn histogram(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Arc<Histogram> {
        match self.get_or_insert(name, help, labels, || Metric::Histogram(Arc::new(Histogram::new(LATENCY_BUCKETS)))) {
            Metric::Histogram(h) => h,
            other => panic!("metric {name} is a {}, not a histogram", other.kind()),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.families.lock().expect("metrics lock");
        let mut out = String::new();
        for (name, family) in families.iter() {
            let Some(first) = family.series.values().next() else {
                continue;
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {}", family.help, first.kind());
            for (labels, metric) in &family.series {
                match metric {
                    Metric::Counter(c) => {
                        let _ = writeln!(out, "{name}{labels} {}", c.get());
                    }
                    Metric::Gauge(g) => {
                        let _ = writeln!(out, "{name}{labels} {}", g.get());
                    }
                    Metric::Histogram(h) => render_histogram(&mut out, name, labels, h),
                }
            }
        }
        out
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    // `le` joins the series' own labels.
    let with_le = |le: &str| {
        if labels.is_empty() {
            format!("{{le=\"{le}\"}}")
        } else {
            format!("{},le=\"{le}\"}}", &labels[..labels.len() - 1])
        }
    };
    let mut cumulative = 0;
    for (bound, bucket) in h.bounds.iter().zip(&h.buckets) {
        cumulative += bucket.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{} {cumulative}", with_le(&bound.to_string()));
    }
    let count = h.count();
    let _ = writeln!(out, "{name}_bucket{} {count}", with_le("+Inf"));
    let _ = writeln!(out, "{name}_sum{labels} {}", h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{labels} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let r = Registry::new();
        let c = r.counter("toil_requests_total", "Requests.", &[("domain", "hello")]);
        c.inc();
        c.add(2);
        assert!(Arc::ptr_eq(&c, &r.counter("toil_requests_total", "Requests.", &[("domain", "hello")])));
        r.gauge("toil_live_instances", "Live.", &[]).set(4);
        let h = r.histogram("toil_request_duration_seconds", "Latency.", &[("domain", "a\"b")]);
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_secs(20));
        let text = r.render();
        assert!(text.contains("# TYPE toil_requests_total counter\ntoil_requests_total{domain=\"hello\"} 3\n"), "{text}");
        assert!(text.contains("toil_live_instances 4\n"));
        assert!(text.contains("toil_request_duration_seconds_bucket{domain=\"a\\\"b\",le=\"0.0001\"} 1\n"), "{text}");
        assert!(text.contains("toil_request_duration_seconds_bucket{domain=\"a\\\"b\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("toil_request_duration_seconds_count{domain=\"a\\\"b\"} 2\n"));
    }
}
