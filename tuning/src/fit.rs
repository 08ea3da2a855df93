//! `sokdo-tune fit` (skeleton: filled in by the issue-13 work).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("sokdo-tune fit is not built yet")
}
