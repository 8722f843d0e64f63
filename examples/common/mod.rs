//! What the examples share: parsing their command line.

use clap::Parser;
use std::process::ExitCode;

/// The parsed arguments, or the exit code after `--help`/`--version` (success) or a usage error
/// (2, one line on stderr). First, a closed stdout (`inspect rust | head`) ends the
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
            eprintln!("{} (see --help)", one_line(&e.render().to_string()));
            Err(ExitCode::from(2))
        }
    }
}

/// clap's error as one line: its first paragraph (the error, with what it lists on the lines
/// after it: the missing flags, the possible values) and its tip, without the usage.
fn one_line(text: &str) -> String {
    let mut parts: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    parts.extend(text.lines().map(str::trim).filter(|l| l.starts_with("tip:")));
    if parts.is_empty() {
        return "error: bad arguments".into();
    }
    parts.join(" ")
}
