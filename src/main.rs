//! Thin binary: parse the command line, run it, turn an error into a message and an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pool_managerd::cli::Cli::parse();
    use pool_managerd::cli::Command;
    if matches!(
        cli.command,
        Command::Journal(_) | Command::Replay(_) | Command::Gpus(_) | Command::Logs(_)
    ) {
        // A reader that goes away (`journal show | head`, `logs -f | head`) ends these printing
        // commands quietly, as it does any Unix tool, instead of a panic on the next print.
        // Commands that talk over sockets (serve, demo, status) keep Rust's default: a peer
        // that disconnects is an error to handle, not a reason to exit.
        // SAFETY: setting a signal's disposition to the default, before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let level = cli.default_log_level();
    pool_managerd::cli::init_logging(cli.log_format, level);
    match pool_managerd::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
