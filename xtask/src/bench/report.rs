//! Results: samples per metric and mode, medians and min-max, ratios, and the Markdown, JSON
//! and SVG outputs.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{json, Value};

use super::{Mode, Workload};

pub struct Metric {
    pub id: String,
    pub workload: Workload,
    pub label: String,
    pub unit: String,
    pub higher_is_better: bool,
    /// The modes this metric is measured for.
    pub modes: Vec<Mode>,
    pub samples: BTreeMap<Mode, Vec<f64>>,
    pub errors: BTreeMap<Mode, String>,
    /// Number of port maps (crr scale points), for the chart.
    pub scale: Option<u32>,
    pub note: Option<String>,
}

#[derive(Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n.is_multiple_of(2) {
        f64::midpoint(s[n / 2 - 1], s[n / 2])
    } else {
        s[n / 2]
    };
    Some(Stats {
        median,
        min: s[0],
        max: s[n - 1],
        n,
    })
}

/// A min–max spread wider than this share of the median makes a row noisy: differences between
/// modes smaller than the spread prove nothing, and the report says so.
pub const NOISY_SPREAD: f64 = 0.20;

impl Stats {
    /// (max − min) / median.
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median.abs()
        }
    }

    pub fn noisy(&self) -> bool {
        self.n > 1 && self.spread() > NOISY_SPREAD
    }
}

impl Metric {
    /// Whether any mode's samples spread over more than `NOISY_SPREAD` of their median.
    pub fn noisy(&self) -> bool {
        self.samples
            .keys()
            .any(|m| self.stats(*m).is_some_and(|st| st.noisy()))
    }

    pub fn stats(&self, mode: Mode) -> Option<Stats> {
        self.samples.get(&mode).and_then(|v| stats(v))
    }

    fn ratio(&self, mode: Mode, to: Mode) -> Option<f64> {
        let (a, b) = (self.stats(mode)?, self.stats(to)?);
        (b.median != 0.0).then(|| a.median / b.median)
    }
}

#[derive(Default)]
pub struct Report {
    pub metrics: Vec<Metric>,
    /// Free-form facts about the run (machine, command, durations).
    pub meta: BTreeMap<String, String>,
    /// Modes whose sandbox could not be built, with why.
    pub broken: BTreeMap<Mode, String>,
}

/// An integer with thousands separators.
pub fn int(n: u32) -> String {
    if n >= 1000 {
        num(f64::from(n))
    } else {
        n.to_string()
    }
}

/// A number with 3 significant digits, no exponent for the usual ranges.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "a bench figure, far inside i64; `as` saturates"
        )]
        let r = x.round() as i64;
        // Thousands separators.
        let s = r.abs().to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        if r < 0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

impl Report {
    pub fn metric_mut(&mut self, id: &str) -> &mut Metric {
        self.metrics
            .iter_mut()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("metric {id} not defined"))
    }

    pub fn record(&mut self, id: &str, mode: Mode, value: f64) {
        self.metric_mut(id)
            .samples
            .entry(mode)
            .or_default()
            .push(value);
    }

    pub fn fail(&mut self, id: &str, mode: Mode, err: String) {
        self.metric_mut(id).errors.entry(mode).or_insert(err);
    }

    /// (cells with numbers, expected cells without).
    pub fn coverage(&self) -> (usize, Vec<String>) {
        let mut ok = 0;
        let mut missing = Vec::new();
        for m in &self.metrics {
            for mode in &m.modes {
                if m.stats(*mode).is_some() {
                    ok += 1;
                } else {
                    let why = m
                        .errors
                        .get(mode)
                        .or_else(|| self.broken.get(mode))
                        .map_or("no sample", String::as_str);
                    missing.push(format!("{} / {}: {why}", m.id, mode.name()));
                }
            }
        }
        (ok, missing)
    }

    pub fn markdown(&self, modes: &[Mode]) -> String {
        let mut s = String::new();
        let mut header = String::from("| workload | metric | unit |");
        let mut rule = String::from("|---|---|---|");
        for m in modes {
            let _ = write!(header, " {} |", m.name());
            rule.push_str("---:|");
        }
        let ratios = modes.contains(&Mode::Tollgate);
        if ratios {
            header.push_str(" tollgate ÷ baseline | tollgate ÷ iptables |");
            rule.push_str("---:|---:|");
        }
        let _ = writeln!(s, "{header}\n{rule}");
        for m in &self.metrics {
            if m.samples.is_empty() && m.errors.is_empty() {
                continue;
            }
            let better = if m.higher_is_better { "↑" } else { "↓" };
            let flag = if m.noisy() { " ⚠" } else { "" };
            let _ = write!(
                s,
                "| {} | {}{flag} | {} {better} |",
                m.workload.name(),
                m.label,
                m.unit
            );
            for mode in modes {
                let cell = match m.stats(*mode) {
                    Some(st) if st.n > 1 => {
                        let mark = if st.noisy() { " ⚠" } else { "" };
                        format!("{} ({}–{}){mark}", num(st.median), num(st.min), num(st.max))
                    }
                    Some(st) => num(st.median),
                    None if m.errors.contains_key(mode) => "failed".into(),
                    None => "–".into(),
                };
                let _ = write!(s, " {cell} |");
            }
            if ratios {
                for to in [Mode::Baseline, Mode::Iptables] {
                    let cell = m
                        .ratio(Mode::Tollgate, to)
                        .map_or_else(|| "–".into(), |r| format!("{r:.2}×"));
                    let _ = write!(s, " {cell} |");
                }
            }
            s.push('\n');
        }
        if self.metrics.iter().any(Metric::noisy) {
            let _ = writeln!(
                s,
                "\n⚠ min–max spread over {:.0}% of the median (in the cells marked): the row's \
                 differences between modes are within its noise and carry no claim.",
                NOISY_SPREAD * 100.0
            );
        }
        let notes: Vec<&Metric> = self.metrics.iter().filter(|m| m.note.is_some()).collect();
        if !notes.is_empty() {
            s.push('\n');
            for m in notes {
                let _ = writeln!(s, "- *{}*: {}", m.label, m.note.as_deref().unwrap_or(""));
            }
        }
        let mut errs = Vec::new();
        for (mode, e) in &self.broken {
            errs.push(format!("- {} sandbox: {e}", mode.name()));
        }
        for m in &self.metrics {
            for (mode, e) in &m.errors {
                errs.push(format!("- {} / {}: {e}", m.id, mode.name()));
            }
        }
        if !errs.is_empty() {
            let _ = writeln!(s, "\nFailures:\n{}", errs.join("\n"));
        }
        s
    }

    pub fn json(&self) -> Value {
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|m| {
                let mut modes = serde_json::Map::new();
                for (mode, v) in &m.samples {
                    let Some(st) = stats(v) else { continue };
                    modes.insert(
                        mode.name().into(),
                        json!({
                            "median": st.median,
                            "min": st.min,
                            "max": st.max,
                            "samples": v,
                            "spread": st.spread(),
                            "noisy": st.noisy(),
                            "ratio_to_baseline": m.ratio(*mode, Mode::Baseline),
                            "ratio_to_iptables": m.ratio(*mode, Mode::Iptables),
                        }),
                    );
                }
                let errors: BTreeMap<&str, &String> =
                    m.errors.iter().map(|(k, v)| (k.name(), v)).collect();
                json!({
                    "id": m.id,
                    "workload": m.workload.name(),
                    "label": m.label,
                    "unit": m.unit,
                    "higher_is_better": m.higher_is_better,
                    "port_maps": m.scale,
                    "note": m.note,
                    "noisy": m.noisy(),
                    "modes": modes,
                    "errors": errors,
                })
            })
            .collect();
        let broken: BTreeMap<&str, &String> =
            self.broken.iter().map(|(k, v)| (k.name(), v)).collect();
        json!({ "meta": self.meta, "broken_modes": broken, "metrics": metrics })
    }

    /// Connections/s against the number of port maps, one line per mode (log x axis).
    #[expect(
        clippy::too_many_lines,
        reason = "one SVG document written top to bottom"
    )]
    pub fn svg(&self, modes: &[Mode]) -> Option<String> {
        let pts: Vec<&Metric> = self
            .metrics
            .iter()
            .filter(|m| m.workload == Workload::Crr && m.scale.is_some())
            .collect();
        if pts.is_empty() {
            return None;
        }
        let scales: Vec<u32> = pts.iter().filter_map(|m| m.scale).collect();
        let ymax = pts
            .iter()
            .flat_map(|m| m.samples.values().flatten().copied())
            .fold(0.0f64, f64::max);
        if ymax <= 0.0 {
            return None;
        }
        let ytop = nice_ceiling(ymax * 1.1);
        let (width, height) = (720.0, 420.0);
        let (left, right, top, bottom) = (80.0, 150.0, 40.0, 60.0);
        let (pw, ph) = (width - left - right, height - top - bottom);
        let lx = |n: u32| f64::from(n.max(1)).log10();
        let (x0, x1) = (
            lx(*scales.iter().min()?),
            lx(*scales.iter().max()?).max(lx(*scales.iter().min()?) + 1.0),
        );
        let xp = |n: u32| left + (lx(n) - x0) / (x1 - x0) * pw;
        let yp = |v: f64| top + ph - v / ytop * ph;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r##"<rect width="{width}" height="{height}" fill="#ffffff"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">New TCP connections/s against published port maps</text>"##,
            left + pw / 2.0
        );
        // Axes, grid and ticks.
        for i in 0..=5 {
            let v = ytop * f64::from(i) / 5.0;
            let y = yp(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + pw,
                left - 6.0,
                y + 4.0,
                num(v)
            );
        }
        for &n in &scales {
            let x = xp(n);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                top + ph,
                top + ph + 18.0,
                int(n)
            );
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000"/><line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#000"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">port maps / DNAT rules (log scale)</text>
<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">connections/s (median, bars: min–max)</text>"##,
            top + ph,
            left + pw,
            top + ph,
            top + ph,
            left + pw / 2.0,
            height - 15.0,
            top + ph / 2.0
        );
        for (i, mode) in (0u32..).zip(modes) {
            let color = mode.color();
            let mut line = Vec::new();
            for m in &pts {
                let (Some(n), Some(st)) = (m.scale, m.stats(*mode)) else {
                    continue;
                };
                let x = xp(n);
                line.push(format!("{x:.1},{:.1}", yp(st.median)));
                let _ = writeln!(
                    svg,
                    r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}" stroke-width="1.5"/><circle cx="{x:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                    yp(st.min),
                    yp(st.max),
                    yp(st.median)
                );
            }
            if line.len() > 1 {
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                    line.join(" ")
                );
            }
            let ly = top + 10.0 + 22.0 * f64::from(i);
            let lx0 = left + pw + 20.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{lx0}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx0 + 24.0,
                lx0 + 30.0,
                ly + 4.0,
                mode.name()
            );
        }
        svg.push_str("</svg>\n");
        Some(svg)
    }
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_ceiling(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        let s = stats(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[1.0, 2.0, 3.0, 10.0]).unwrap().median, 2.5);
        assert!(stats(&[]).is_none());
        assert_eq!(num(12345.6), "12,346");
        assert_eq!(num(9.412), "9.41");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(nice_ceiling(7300.0), 10000.0);
        assert_eq!(nice_ceiling(1800.0), 2000.0);
    }

    #[test]
    fn spread_over_a_fifth_of_the_median_is_noisy() {
        let quiet = stats(&[10.0, 10.0, 11.5]).unwrap();
        assert!((quiet.spread() - 0.15).abs() < 1e-9);
        assert!(!quiet.noisy());
        let noisy = stats(&[10.0, 8.0, 12.5]).unwrap();
        assert!(noisy.noisy());
        assert!(!stats(&[5.0]).unwrap().noisy(), "one sample has no spread");
    }
}
