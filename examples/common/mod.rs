//! What the examples share: parsing their command line.

use clap::Parser;
use std::process::ExitCode;

/// The parsed arguments, or the exit code after `--help`/`--version` (success) or a usage error
/// (2, its first line on stderr). First, a closed stdout (`inspect rust | head`) ends the
/// program quietly, as it does other command-line tools, instead of making `print!` panic.
pub fn parse<A: Parser>() -> Result<A, ExitCode> {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of SIGPIPE (Rust's runtime ignores it), before
    // any other thread exists; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match A::try_parse() {
        Ok(a) => Ok(a),
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // No subcommand: the whole help, on stderr.
            eprint!("{}", e.render());
            Err(ExitCode::from(2))
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
