//! Prints the packet filter's cost per packet for rule sets of 10, 1 000
//! and 10 000 rules: `cargo run --release -p securevm --example netfilter_bench`.

use securevm::netfilter::bench;

fn main() {
    for rules in [10, 1_000, 10_000] {
        let report = bench::measure(rules);
        println!(
            "rules {:>6}: rule decision {:>6.1} ns (hot {:>5.1} ns, linear scan {:>8.1} ns), whole frame: new flow {:>6.1} ns, established {:>6.1} ns ({:.0}% of new flows allowed)",
            report.rules,
            report.rule_lookup_ns,
            report.rule_lookup_hot_ns,
            report.linear_scan_ns,
            report.new_flow_ns,
            report.established_ns,
            report.allowed_fraction * 100.0
        );
    }
    println!(
        "filter-ns-per-packet-10k: {:.1}",
        bench::decision_ns_per_packet(10_000)
    );
}
