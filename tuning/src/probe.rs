//! `sokdo-tune probe` (skeleton: filled in by the issue-13 work).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("sokdo-tune probe is not built yet")
}
