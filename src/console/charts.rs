//! Pictures drawn on the server as SVG (no chart library in the browser): a tenant's
//! conversations per day by state, and its minutes used over the month against its allocation.
//! Pure: numbers in, markup out. Each picture carries a title and a description that say what
//! it shows in words, for screen readers.

use maud::{Markup, html};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 10.0;

/// States in the order bars stack them, with their colours (distinct for colour-blind eyes,
/// each at least 3:1 against white).
pub const STATES: [(&str, &str); 6] = [
    ("forwarded", "#1b7f3b"),
    ("waiting", "#8a6d00"),
    ("held", "#6b4fbb"),
    ("rejected", "#b42318"),
    ("expired", "#6b6b6b"),
    ("failed", "#111111"),
];

/// One day of conversations: its label (`06-08`) and how many ended in each state.
pub struct Day {
    pub label: String,
    pub counts: Vec<(String, i64)>,
}

impl Day {
    fn total(&self) -> i64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
    fn count(&self, state: &str) -> i64 {
        self.counts
            .iter()
            .filter(|(s, _)| bucket(s) == state)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The bar a state is drawn in (ready and forwarding are still on their way: waiting).
fn bucket(state: &str) -> &str {
    match state {
        "ready" | "forwarding" => "waiting",
        s => s,
    }
}

/// Conversations per day, stacked by state.
pub fn per_day(id: &str, days: &[Day]) -> Markup {
    let max = days.iter().map(Day::total).max().unwrap_or(0).max(1);
    let plot_h = HEIGHT - BOTTOM - TOP;
    let step = (WIDTH - LEFT) / days.len().max(1) as f64;
    let total: i64 = days.iter().map(Day::total).sum();
    let description = format!(
        "{total} conversations over {} days; at most {max} in a day.{}",
        days.len(),
        STATES
            .iter()
            .map(|(s, _)| format!(" {s}: {}", days.iter().map(|d| d.count(s)).sum::<i64>()))
            .collect::<String>()
    );
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby=(format!("{id}-t {id}-d")) {
                title id=(format!("{id}-t")) { "Conversations per day, by state" }
                desc id=(format!("{id}-d")) { (description) }
                (axis(max, plot_h))
                @for (i, day) in days.iter().enumerate() {
                    @let x = LEFT + i as f64 * step + step * 0.15;
                    @for (y, h, n, state, colour) in stack(day, max, plot_h) {
                        rect x=(fmt(x)) y=(fmt(y)) width=(fmt(step * 0.7)) height=(fmt(h)) fill=(colour) {
                            title { (day.label) ": " (n) " " (state) }
                        }
                    }
                    @if i % label_every(days.len()) == 0 {
                        text.label x=(fmt(x + step * 0.35)) y=(fmt(HEIGHT - 6.0)) text-anchor="middle" { (day.label) }
                    }
                }
            }
            figcaption {
                ul.legend {
                    @for (state, _) in STATES {
                        li { span class=(format!("swatch s-{state}")) {} (state) }
                    }
                }
            }
        }
    }
}

/// Minutes used over the month (cumulative, by day), against the allocation if there is one.
pub fn minutes(
    id: &str,
    month: &str,
    days_in_month: u32,
    used_by_day: &[(u32, i64)],
    allocation: Option<u64>,
) -> Markup {
    let mut cumulative = Vec::with_capacity(days_in_month as usize);
    let mut sum = 0i64;
    for day in 1..=days_in_month {
        sum += used_by_day
            .iter()
            .filter(|(d, _)| *d == day)
            .map(|(_, s)| s)
            .sum::<i64>();
        cumulative.push(sum);
    }
    let used_minutes = sum as f64 / 60.0;
    let top = allocation.map_or(used_minutes, |a| a as f64).max(used_minutes).max(1.0);
    let plot_h = HEIGHT - BOTTOM - TOP;
    let step = (WIDTH - LEFT) / (days_in_month.max(1) as f64);
    let y_of = |minutes: f64| HEIGHT - BOTTOM - minutes / top * plot_h;
    let points: String = cumulative
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{},{} ",
                fmt(LEFT + (i as f64 + 1.0) * step),
                fmt(y_of(*s as f64 / 60.0))
            )
        })
        .collect();
    let description = match allocation {
        Some(a) => format!("{} of {a} minutes used in {month}.", used_minutes.ceil()),
        None => format!("{} minutes used in {month}; no allocation.", used_minutes.ceil()),
    };
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby=(format!("{id}-t {id}-d")) {
                title id=(format!("{id}-t")) { "Minutes used in " (month) }
                desc id=(format!("{id}-d")) { (description) }
                (axis_minutes(top, plot_h))
                @if let Some(a) = allocation {
                    line.allocation x1=(fmt(LEFT)) x2=(fmt(WIDTH)) y1=(fmt(y_of(a as f64))) y2=(fmt(y_of(a as f64))) {}
                    text.label x=(fmt(WIDTH - 4.0)) y=(fmt(y_of(a as f64) + 14.0)) text-anchor="end" { "allocation " (a) }
                }
                polyline.used points=(points) {}
                @for day in [1, 8, 15, 22, days_in_month] {
                    text.label x=(fmt(LEFT + day as f64 * step)) y=(fmt(HEIGHT - 6.0))
                        text-anchor=(if day == days_in_month { "end" } else { "middle" }) { (day) }
                }
            }
            figcaption { (description) }
        }
    }
}

/// A day's bar: each state's piece (top, height, count, state, colour), bottom up.
fn stack(day: &Day, max: i64, plot_h: f64) -> Vec<(f64, f64, i64, &'static str, &'static str)> {
    let mut y = HEIGHT - BOTTOM;
    let mut pieces = Vec::new();
    for (state, colour) in STATES {
        let n = day.count(state);
        if n > 0 {
            let h = n as f64 / max as f64 * plot_h;
            y -= h;
            pieces.push((y, h, n, state, colour));
        }
    }
    pieces
}

fn axis(max: i64, plot_h: f64) -> Markup {
    html! {
        line.axis x1=(fmt(LEFT)) x2=(fmt(LEFT)) y1=(fmt(TOP)) y2=(fmt(TOP + plot_h)) {}
        line.axis x1=(fmt(LEFT)) x2=(fmt(WIDTH)) y1=(fmt(TOP + plot_h)) y2=(fmt(TOP + plot_h)) {}
        text.label x=(fmt(LEFT - 6.0)) y=(fmt(TOP + 8.0)) text-anchor="end" { (max) }
        text.label x=(fmt(LEFT - 6.0)) y=(fmt(TOP + plot_h)) text-anchor="end" { "0" }
    }
}

fn axis_minutes(top: f64, plot_h: f64) -> Markup {
    axis(top.ceil() as i64, plot_h)
}

/// Every how many days a label fits.
fn label_every(days: usize) -> usize {
    days.div_ceil(10).max(1)
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_states_and_say_so_in_words() {
        let days = vec![
            Day {
                label: "06-01".into(),
                counts: vec![("forwarded".into(), 3), ("ready".into(), 1)],
            },
            Day {
                label: "06-02".into(),
                counts: vec![("rejected".into(), 2)],
            },
        ];
        let svg = per_day("c", &days).into_string();
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        assert!(
            svg.contains("6 conversations over 2 days; at most 4 in a day."),
            "{svg}"
        );
        assert!(svg.contains(" forwarded: 3 waiting: 1 held: 0 rejected: 2"), "{svg}");
        assert!(svg.contains("06-01: 1 waiting"), "{svg}");
    }

    #[test]
    fn minutes_accumulate_against_the_allocation() {
        let svg = minutes("m", "2026-06", 30, &[(1, 600), (3, 1200)], Some(100)).into_string();
        assert!(svg.contains("30 of 100 minutes used in 2026-06."), "{svg}");
        assert!(svg.contains("allocation 100"), "{svg}");
        // The line stays at 10 minutes on day 2 and reaches 30 on day 3.
        let y = |m: f64| fmt(HEIGHT - BOTTOM - m / 100.0 * (HEIGHT - BOTTOM - TOP));
        assert!(
            svg.contains(&format!(",{} ", y(10.0))) && svg.contains(&format!(",{} ", y(30.0))),
            "{svg}"
        );
        assert!(
            minutes("m", "2026-06", 30, &[], None)
                .into_string()
                .contains("no allocation")
        );
    }
}
