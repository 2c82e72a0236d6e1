//! Route matching and config compile at scale: matching at 10,000 routes
//! should cost about what it costs at 10 (the index), and compiling 10,000
//! routes and 1,000 pools should take well under half a second.

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fulcrum_config::snapshot::RequestView;
use http::{HeaderMap, Method};

/// A config with `routes` routes over `routes / 10` pools (at least one),
/// mixing what real configs hold: per-service hosts with path prefixes,
/// wildcard hosts, exact paths, regexes, and a catch-all last.
fn config(routes: usize) -> String {
    let pools = (routes / 10).max(1);
    let mut s = String::from("[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\n");
    for i in 0..routes - 1 {
        let m = match i % 4 {
            0 => format!("host = \"svc{i}.example.com\", path_prefix = \"/api/\""),
            1 => format!("host = \"*.tenant{i}.example.com\""),
            2 => format!("path = \"/exact/{i}\", methods = [\"GET\", \"POST\"]"),
            _ => format!("path_regex = \"/re{i}/[0-9]+\""),
        };
        let _ = write!(
            s,
            "[[route]]\nname = \"r{i}\"\nmatch = {{ {m} }}\npool = \"p{}\"\n",
            i % pools
        );
    }
    let _ = write!(s, "[[route]]\nname = \"last\"\npool = \"p0\"\n");
    for p in 0..pools {
        let _ = write!(
            s,
            "[pool.p{p}]\nbackends = [{{ addr = \"127.0.0.{}:{} \" }}]\n",
            1 + p % 250,
            1024 + p
        );
    }
    s.replace(" \" }]", "\" }]")
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for n in [10, 10_000] {
        let source = config(n);
        let checked = fulcrum_config::check("bench.toml", &source);
        let snapshot = checked.snapshot.clone().unwrap_or_else(|| {
            panic!(
                "{}",
                fulcrum_config::render_human("bench.toml", &source, &checked)
            )
        });
        // A request for a service route near the end of the table.
        let host = format!("svc{}.example.com", (n - 2) / 4 * 4);
        let hit = RequestView {
            method: &Method::GET,
            host: Some(&host),
            path: "/api/users/1",
            headers: &headers,
        };
        c.bench_function(&format!("route/{n} routes/host+prefix"), |b| {
            b.iter(|| black_box(snapshot.route(black_box(&hit))))
        });
        // A request only the catch-all takes: every bucket it reaches is tried.
        let miss = RequestView {
            method: &Method::GET,
            host: Some("www.other.org"),
            path: "/index.html",
            headers: &headers,
        };
        c.bench_function(&format!("route/{n} routes/catch-all"), |b| {
            b.iter(|| black_box(snapshot.route(black_box(&miss))))
        });
    }
    let big = config(10_000);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("10000 routes, 1000 pools", |b| {
        b.iter(|| black_box(fulcrum_config::check("bench.toml", black_box(&big))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
