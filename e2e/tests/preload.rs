//! Interpreters already running when the job arrives (warm pools' waiting interpreters): a
//! program cannot tell one from a fresh interpreter except by speed, in all four languages,
//! and its CPU time is its own, not the preload's.
use std::time::Duration;

use codeinterp_crds::{CodeRun, Language, RunnerPool};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use testkit::rest::{Api as Rest, SANDBOX_NAMESPACE};
use testkit::*;

/// The programs of the table, per language: what a program can ask about where it runs, an
/// uncaught exception, and an exit code with an exit handler.
fn programs(lang: Language) -> [&'static str; 3] {
    match lang {
        Language::Python => [
            "import sys, os\nprint(__name__, sys.argv, sorted(globals()), os.getcwd(), repr(sys.stdin.read()))\nprint(sys.path[0], file=sys.stderr)",
            "def f():\n    raise ValueError('boom')\nf()",
            "import atexit, sys\natexit.register(lambda: print('bye'))\nsys.exit(3)",
        ],
        Language::Node => [
            "console.log(require.main === module, process.argv.slice(1), Object.keys(globalThis).sort().join(','), process.cwd(), JSON.stringify(require('fs').readFileSync(0, 'utf8')), typeof __filename, __filename)",
            "function f() { throw new Error('boom') }\nf()",
            "process.on('exit', () => console.log('bye'))\nprocess.exit(3)",
        ],
        Language::Ruby => [
            "p [$0, __FILE__, ARGV, local_variables, instance_variables, Dir.pwd, STDIN.read]",
            "def f\n  raise 'boom'\nend\nf",
            "at_exit { puts 'bye' }\nexit 3",
        ],
        Language::Php => [
            "<?php var_dump($argv, __FILE__, array_keys($GLOBALS), getcwd(), stream_get_contents(STDIN));",
            "<?php function f() { throw new Exception('boom'); }\nf();",
            "<?php register_shutdown_function(function () { echo \"bye\\n\"; });\nexit(3);",
        ],
    }
}

/// A run's answer: what the program can be told apart by.
fn answer(run: &Value) -> (Value, Value, Value, Value) {
    (
        run["status"].clone(),
        run["exit_code"].clone(),
        run["stdout"].clone(),
        run["stderr"].clone(),
    )
}

async fn pool_of(client: &kube::Client, lang: Language) -> Option<String> {
    if lang == Language::Python {
        return None; // the chart's own pool
    }
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let name = format!("e2e-{}-{}", lang.as_str(), random_suffix());
    let pool: RunnerPool = serde_json::from_value(json!({
        "apiVersion": "codeinterp.dev/v1alpha1", "kind": "RunnerPool",
        "metadata": {"name": name},
        "spec": {"language": lang.as_str(), "minReplicas": 1, "maxReplicas": 1},
    }))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    Some(name)
}

/// Waits until the pool has an idle pod whose interpreter is up.
async fn wait_idle(client: &kube::Client, pool: &str) {
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    let ready = eventually_async(Duration::from_secs(120), || async {
        pools
            .get(pool)
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|s| s.replicas >= 1)
    })
    .await;
    assert!(ready, "pool {pool} never had an idle pod");
    // Held is not yet ready to preload: the interpreter needs a moment more.
    tokio::time::sleep(Duration::from_secs(3)).await;
}

async fn run(api: &Rest, lang: Language, code: &str, cold: bool) -> Value {
    let mut body =
        json!({"language": lang.as_str(), "code": code, "args": ["a b", ""], "stdin": "in\n"});
    if cold {
        // A shape no pool has: a pod made for the run, its interpreter fresh.
        body["limits"] = json!({"memory_mb": 96});
    }
    api.post("/v1/runs", &body).await.expect(200)
}

async fn preloaded(client: &kube::Client, id: &str) -> bool {
    let runs: Api<CodeRun> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    runs.get(id)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.preloaded)
}

#[tokio::test]
async fn a_program_cannot_tell_a_preloaded_interpreter_from_a_fresh_one_in_all_four_languages() {
    let client = client().await;
    let api = Rest::main();
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), SANDBOX_NAMESPACE);
    for lang in Language::ALL {
        let pool = pool_of(&client, lang).await;
        wait_idle(&client, pool.as_deref().unwrap_or("python")).await;
        for code in programs(lang) {
            let warm = run(&api, lang, code, false).await;
            assert!(
                preloaded(&client, warm["id"].as_str().unwrap()).await,
                "{lang:?}: the run did not get a preloaded interpreter: {warm}"
            );
            let cold = run(&api, lang, code, true).await;
            assert!(!preloaded(&client, cold["id"].as_str().unwrap()).await);
            assert_eq!(answer(&warm), answer(&cold), "{lang:?}: {code}");
            // The pool refills before the next program.
            wait_idle(&client, pool.as_deref().unwrap_or("python")).await;
        }
        if let Some(pool) = pool {
            pools.delete(&pool, &DeleteParams::default()).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_preloaded_interpreters_cpu_time_is_the_programs_not_the_preloads() {
    let client = client().await;
    let api = Rest::main();
    // A run's CPU on a preloaded interpreter, checked to have been one (the other test of
    // this file takes the pool's pods too: a run that found none went cold, and is tried
    // again).
    let cpu_of = async |code: &str| {
        for _ in 0..5 {
            wait_idle(&client, "python").await;
            let body = json!({"language": "python", "code": code});
            let run = api.post("/v1/runs", &body).await.expect(200);
            assert_eq!(run["status"], "completed", "{run}");
            if preloaded(&client, run["id"].as_str().unwrap()).await {
                return run["usage"]["cpu_ms"].as_u64().unwrap();
            }
            eprintln!("not on a preloaded interpreter, again: {run}");
        }
        panic!("five runs found no preloaded interpreter");
    };
    // What any run costs beside its program (the job read, the code compiled, the record
    // written), measured in the same test: on a loaded node it alone was 40 ms.
    let empty = cpu_of("pass").await;
    let busy = cpu_of(
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2:\n    pass",
    )
    .await;
    eprintln!("cpu_ms: empty program {empty}, 200 ms busy loop {busy}");
    // Importing numpy, pandas and matplotlib alone takes over 300 ms of CPU here: counted,
    // either run would show it.
    assert!(empty < 100, "an empty program took {empty} ms of CPU");
    let program = busy.saturating_sub(empty);
    assert!(
        (160..=240).contains(&program),
        "the busy loop counted {program} ms ({busy} - {empty})"
    );
}
