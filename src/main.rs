//! The `todoql` binary: parse the command line, then hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;
use todoql::{Cli, Command, Config, Server};

fn main() -> ExitCode {
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
