//! The `todoql` binary: parse the command line, then hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;
use todoql::{Cli, Command, Config, Server};

/// A request allocates and frees many small, short-lived objects across
/// threads (parsed documents, resolver futures, JSON); glibc's malloc spent
/// about a fifth of the server's CPU on them under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (not exported by `libmimalloc-sys`;
/// mimalloc keeps its option numbers stable, deprecated ones included).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Return freed pages to the OS at once rather than after mimalloc's default
/// 1 s: purging is lazy (done by the next allocation on the same thread), so
/// with a delay, memory freed by a burst stays resident while threads idle.
/// No throughput cost was measurable; RSS after the 256-connection benchmark
/// fell from 44 to 33 MB. `MIMALLOC_PURGE_DELAY` still overrides it.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads it at its next purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn main() -> ExitCode {
    tune_allocator();
    // Parsers and resolvers recurse; a larger stack than tokio's 2 MiB is a
    // margin on top of the document limits.
    match tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(8 << 20).build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("todoql: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    // `.env` fills in what the environment does not set; flags win over both.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let config = match Config::from_args(&cli.args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("todoql: {error}");
            return ExitCode::from(2);
        }
    };
    todoql::telemetry::init(config.log_format);

    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::PrintSchema => {
            print!("{}", todoql::graphql::sdl());
            Ok(())
        }
        Command::Migrate => todoql::db::migrations::run(&config.database_url).await.map(|applied| {
            tracing::info!(applied, "migrations applied");
        }),
        Command::Serve => match Server::build(config).await {
            Ok(server) => server
                .run_until(todoql::app::shutdown_signal())
                .await
                .map_err(todoql::error::AppError::internal),
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("todoql: {error:?}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// Guards the hard-coded option number: mimalloc's default purge delay
    /// is 1000 ms, and no other option of its has that default.
    #[test]
    fn the_purge_delay_option_number_is_right() {
        // SAFETY: reads an integer option.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000);
        super::tune_allocator();
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) }, 0);
    }
}
