use clap::Parser;
use codeinterp_apiserver::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    if cfg.print_openapi {
        print!("{}", codeinterp_apiserver::openapi::document());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,tower_http=info".into()),
        )
        .init();
    codeinterp_apiserver::serve::serve(cfg).await
}
