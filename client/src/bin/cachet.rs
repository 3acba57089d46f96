//! `cachet`: the command line client; see `cachet::cli`.

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Quiet unless asked: a log only with CACHET_LOG, in colour only on a
    // terminal without NO_COLOR.
    if let Ok(filter) = std::env::var("CACHET_LOG") {
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).init();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let (mut stdin, mut out) = (std::io::stdin(), std::io::stdout());
    match rt.block_on(cachet::cli::run(std::env::args(), &mut stdin, &mut out)) {
        Ok(1) => {
            eprintln!("(not found)");
            ExitCode::from(1)
        }
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("cachet: {msg}");
            ExitCode::from(2)
        }
    }
}
