//! `cachet`: the command line client; see `cachet::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("warn").init();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let mut out = std::io::stdout();
    match rt.block_on(cachet::cli::run(std::env::args(), &mut out)) {
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
