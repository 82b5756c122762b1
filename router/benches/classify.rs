//! Time per statement of the classifier, which runs on every simple query and Parse:
//! `cargo bench -p router --bench classify`. Prints nanoseconds per call for typical
//! OLTP statements (pgbench's among them); no assertion, the figures are the result.

use std::hint::black_box;
use std::time::{Duration, Instant};

const CASES: &[(&str, &str)] = &[
    (
        "pgbench -S",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 51234;",
    ),
    (
        "pgbench update",
        "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 51234;",
    ),
    (
        "ORM select",
        "SELECT \"users\".\"id\", \"users\".\"email\", \"users\".\"created_at\" FROM \"users\" \
         WHERE \"users\".\"id\" = $1 AND \"users\".\"deleted_at\" IS NULL LIMIT 1",
    ),
    (
        "join + IN list",
        "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
         WHERE o.status IN ('open', 'paid') AND o.created_at > now() - interval '1 day' \
         ORDER BY o.created_at DESC LIMIT 50",
    ),
    ("BEGIN", "BEGIN"),
    ("SET", "SET application_name = 'web'"),
];

fn main() {
    println!("{:<16} {:>10}  class", "statement", "ns/call");
    for (name, sql) in CASES {
        let class = router::classify(sql);
        let per_call = time(|| {
            black_box(router::classify(black_box(sql)));
        });
        println!(
            "{name:<16} {:>10.1}  {class:?}",
            per_call.as_secs_f64() * 1e9
        );
    }
}

/// The best of several runs of about 50 ms each: the least disturbed by the rest of
/// the machine.
fn time(mut f: impl FnMut()) -> Duration {
    let mut n = 1u32;
    loop {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        if start.elapsed() > Duration::from_millis(5) {
            break;
        }
        n *= 2;
    }
    let n = n * 10;
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed() / n
        })
        .min()
        .unwrap_or_default()
}
