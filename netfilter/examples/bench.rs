//! The packet filter's benchmark on its own, without building securevm:
//! `cargo run --release -p netfilter --example bench` prints the lines of
//! `securevm bench net` (same code, same figures).

fn main() {
    netfilter::bench::run(|line| println!("{line}"));
}
