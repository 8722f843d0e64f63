//! What the examples share: parsing their command line.

use clap::Parser;
use std::process::ExitCode;

/// The parsed arguments, or the exit code after `--help`/`--version` (success) or a usage error
/// (2, its first line on stderr).
pub fn parse<A: Parser>() -> Result<A, ExitCode> {
    match A::try_parse() {
        Ok(a) => Ok(a),
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = e.render().to_string();
            eprintln!(
                "{} (see --help)",
                text.lines().next().unwrap_or("error: bad arguments")
            );
            Err(ExitCode::from(2))
        }
    }
}
