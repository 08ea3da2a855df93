//! sokdo-tune: how much one instance carries, before it is deployed. A black box to the
//! engine, like the bench: it reads the host (`probe`), writes the host's settings (`apply`),
//! fits a capacity model from `sokdo-bench` JSON reports (`fit`) and plans instances for a
//! load (`plan`). It never links engine code.
//!
//! Modules: `probe` reads the host and orders its caps; `apply` writes the settings that lift
//! them; `fit` turns bench reports (read by `report`) into a `model::Model` by least squares
//! (`lsq`); `plan` sizes a deployment from a model and the `instances` table, with `credits`
//! for t3 CPU credits.

mod apply;
mod caps;
mod credits;
mod diff;
mod fit;
mod host;
mod instances;
mod lsq;
mod model;
mod out;
mod plan;
mod probe;
mod report;
mod saturation;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sokdo-tune",
    version,
    about = "Know an instance's capacity before deploying it"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Read this host's limits and print, in order, what caps sockets first and how to lift it.
    Probe(probe::Args),
    /// Write the settings that lift the caps (sysctl.d file, systemd limits drop-in).
    Apply(apply::Args),
    /// Fit a capacity model from sokdo-bench JSON reports.
    Fit(fit::Args),
    /// How many instances carry a load, what limits each, and their flags.
    Plan(plan::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Probe(a) => probe::run(&a),
        Cmd::Apply(a) => apply::run(&a),
        Cmd::Fit(a) => fit::run(&a),
        Cmd::Plan(a) => plan::run(&a),
    }
}
