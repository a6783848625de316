//! Stand-in for `securevm disk ...` and `securevm bench disk` until
//! main.rs wires the storage commands: the same clap pieces, run the
//! same way. `cargo run --release --example storage_cli -- bench disk`.

use clap::{Parser, Subcommand};
use securevm::storage::bench::{run_disk_bench, BenchDiskArgs};
use securevm::storage::{run_disk_command, DiskCommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Manage encrypted disk images.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Disk I/O path throughput.
    Disk(BenchDiskArgs),
}

fn main() -> anyhow::Result<()> {
    env_logger::init();
    match Cli::parse().command {
        Top::Disk(command) => run_disk_command(command)?,
        Top::Bench(BenchCommand::Disk(args)) => print!("{}", run_disk_bench(&args)?),
    }
    Ok(())
}
