//! Thin binary: parse the command line, run it, turn an error into a message and an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pool_managerd::cli::Cli::parse();
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
