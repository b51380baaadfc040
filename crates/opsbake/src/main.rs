//! The opsbake command line.

fn main() -> anyhow::Result<()> {
    Ok(())
}
