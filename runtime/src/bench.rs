//! `runtime bench`: measurements on a scratch database (filled in below).

use std::process::ExitCode;

/// Options of `runtime bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs the benchmarks.
pub async fn run(_args: BenchArgs) -> ExitCode {
    ExitCode::SUCCESS
}
