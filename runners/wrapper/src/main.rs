//! The runner container's entrypoint; everything lives in the library so it can be tested.
fn main() -> std::process::ExitCode {
    ci_runner::main()
}
