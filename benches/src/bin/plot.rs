//! Draws what `benches/resp_compare.sh` measured (benches/results/*.csv) as
//! SVG beside benches/RESULTS.md: throughput by point (connections x
//! pipeline depth) and latency percentiles, cachet beside Redis (and an
//! earlier build, when one was measured), the median of the rounds.
//!
//!   cargo run -p cachet-benches --bin plot -- benches/results/resp-everysec.csv benches/
//!
//! writes `resp-everysec-throughput.svg` and `resp-everysec-latency.svg`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// One measurement: server, test, connections, depth, rps, p50 ms, p99 ms.
struct Row {
    server: String,
    test: String,
    point: (u32, u32),
    rps: f64,
    p50: f64,
    p99: f64,
}

fn read(path: &Path) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || format!("{}:{}: expected server,test,clients,pipeline,rps,p50_ms,p99_ms", path.display(), n + 1);
        if f.len() != 7 {
            return Err(bad());
        }
        let num = |i: usize| f[i].parse::<f64>().map_err(|_| bad());
        rows.push(Row {
            server: f[0].into(),
            test: f[1].into(),
            point: (num(2)? as u32, num(3)? as u32),
            rps: num(4)?,
            p50: num(5)?,
            p99: num(6)?,
        });
    }
    Ok(rows)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A test at a point: ("set", (connections, depth)).
type Point = (String, (u32, u32));
/// Each server's (rps, p50, p99) at a point.
type Figures = BTreeMap<String, (f64, f64, f64)>;
/// (test, point) -> server -> (rps, p50, p99), medians over rounds.
type Table = BTreeMap<Point, Figures>;

fn table(rows: &[Row]) -> Table {
    let mut grouped: BTreeMap<(Point, String), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        grouped.entry(((r.test.clone(), r.point), r.server.clone())).or_default().push(r);
    }
    let mut t = Table::new();
    for (((test, point), server), rs) in grouped {
        let m = |f: fn(&Row) -> f64| median(rs.iter().map(|r| f(r)).collect());
        t.entry((test, point)).or_default().insert(server, (m(|r| r.rps), m(|r| r.p50), m(|r| r.p99)));
    }
    t
}

fn colour(server: &str) -> RGBColor {
    match server {
        "cachet" => RGBColor(0x2a, 0x6f, 0xdb),
        "redis" => RGBColor(0xd8, 0x2c, 0x20),
        _ => RGBColor(0x99, 0x99, 0x99),
    }
}

/// Grouped bars: one group per (test, point), one bar per server.
fn bars(
    out: &Path,
    title: &str,
    y_label: &str,
    t: &Table,
    value: impl Fn(&(f64, f64, f64)) -> f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let servers: Vec<String> = {
        let mut s: Vec<String> = t.values().flat_map(|m| m.keys().cloned()).collect();
        s.sort_by_key(|n| match n.as_str() {
            "cachet" => 0,
            "redis" => 2,
            _ => 1,
        });
        s.dedup();
        s
    };
    let groups: Vec<(&Point, &Figures)> = t.iter().collect();
    let top = groups.iter().flat_map(|(_, m)| m.values().map(&value)).fold(0.0, f64::max) * 1.15;
    let root = SVGBackend::new(out, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    let labels: Vec<String> =
        groups.iter().map(|((test, (c, p)), _)| format!("{} {c}x{p}", test.to_uppercase())).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 { labels.get(i).cloned().unwrap_or_default() } else { String::new() }
        })
        .y_desc(y_label)
        .draw()?;
    let width = 0.8 / servers.len() as f64;
    for (k, server) in servers.iter().enumerate() {
        let c = colour(server);
        chart
            .draw_series(groups.iter().enumerate().filter_map(|(i, (_, m))| {
                let v = value(m.get(server)?);
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], c.filled()))
            }))?
            .label(server.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.9)).draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [csv, dir] = &args[..] else {
        return Err("usage: plot RESULTS.csv OUT_DIR (see benches/resp_compare.sh)".into());
    };
    let csv = PathBuf::from(csv);
    let rows = read(&csv)?;
    if rows.is_empty() {
        return Err(format!("{} has no measurements", csv.display()).into());
    }
    let t = table(&rows);
    let stem = csv.file_stem().and_then(|s| s.to_str()).unwrap_or("resp");
    let dir = PathBuf::from(dir);
    let throughput = dir.join(format!("{stem}-throughput.svg"));
    bars(
        &throughput,
        &format!("{stem}: requests per second (redis-benchmark, higher is better)"),
        "requests/s",
        &t,
        |v| v.0,
    )?;
    let latency = dir.join(format!("{stem}-latency.svg"));
    bars(&latency, &format!("{stem}: p99 latency in ms (redis-benchmark, lower is better)"), "p99 ms", &t, |v| v.2)?;
    let p50 = dir.join(format!("{stem}-latency-p50.svg"));
    bars(&p50, &format!("{stem}: p50 latency in ms (redis-benchmark, lower is better)"), "p50 ms", &t, |v| v.1)?;
    println!("wrote {}, {} and {}", throughput.display(), latency.display(), p50.display());
    Ok(())
}
