//! Output to stdout that ends quietly when the reader goes away (`sokdo-tune probe | head`)
//! instead of the panic `print!` raises on a closed pipe.

/// Writes `text` to stdout; a reader that went away (`| head`) ends the output quietly
/// instead of the panic `print!` would raise.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
