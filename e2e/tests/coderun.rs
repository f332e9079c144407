//! CodeRuns on the real cluster, through the operator, for each of the four languages: what a
//! program prints, how it ends, what it may not do.
use std::time::{Duration, Instant};

use codeinterp_crds::{CodeRun, Language, Phase};
use futures::future::join_all;
use serde_json::json;
use sha2::{Digest, Sha256};
use testkit::*;

const LANGS: [Language; 4] = [
    Language::Python,
    Language::Node,
    Language::Ruby,
    Language::Php,
];
const WITHIN: Duration = Duration::from_secs(120);

/// The same behaviour, written in each language.
struct Program {
    python: &'static str,
    node: &'static str,
    ruby: &'static str,
    php: &'static str,
}

impl Program {
    fn get(&self, lang: Language) -> &'static str {
        match lang {
            Language::Python => self.python,
            Language::Node => self.node,
            Language::Ruby => self.ruby,
            Language::Php => self.php,
        }
    }
}

/// Runs the program in every language at once; returns the finished CodeRuns in LANGS order.
async fn run_all(
    ns: &TestNamespace,
    program: &Program,
    adjust: impl Fn(&mut codeinterp_crds::CodeRunSpec),
) -> Vec<CodeRun> {
    let runs = ns.runs();
    let futures = LANGS.map(|lang| {
        let mut s = spec(lang, program.get(lang));
        adjust(&mut s);
        let runs = runs.clone();
        async move { run_to_end(&runs, s, WITHIN).await.unwrap() }
    });
    join_all(futures).await
}

fn stdout(run: &CodeRun) -> String {
    run.status
        .as_ref()
        .and_then(|s| s.stdout_preview.clone())
        .unwrap_or_default()
}

fn stderr(run: &CodeRun) -> String {
    run.status
        .as_ref()
        .and_then(|s| s.stderr_preview.clone())
        .unwrap_or_default()
}

fn describe(run: &CodeRun) -> String {
    format!("{} {:?}", run.spec.language.as_str(), run.status)
}

#[tokio::test]
async fn a_program_runs_and_its_stdout_and_stderr_come_back_apart() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-ok").await;
    let program = Program {
        python: "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)",
        node: "console.log('to stdout'); console.error('to stderr')",
        ruby: "puts 'to stdout'; $stderr.puts 'to stderr'",
        php: "<?php echo \"to stdout\\n\"; fwrite(STDERR, \"to stderr\\n\");",
    };
    for run in run_all(&ns, &program, |_| {}).await {
        let st = run.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(Phase::Completed), "{}", describe(&run));
        assert_eq!(st.exit_code, Some(0), "{}", describe(&run));
        assert_eq!(stdout(&run), "to stdout\n", "{}", describe(&run));
        assert_eq!(stderr(&run), "to stderr\n", "{}", describe(&run));
        assert!(st.usage.as_ref().unwrap().wall_ms > 0);
        assert!(
            st.applied
                .as_ref()
                .unwrap()
                .seccomp
                .starts_with("Localhost/")
        );
    }
}

#[tokio::test]
async fn a_non_zero_exit_is_completed_with_that_exit_code() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-exit").await;
    let program = Program {
        python: "import sys\nsys.exit(3)",
        node: "process.exit(3)",
        ruby: "exit 3",
        php: "<?php exit(3);",
    };
    for run in run_all(&ns, &program, |_| {}).await {
        let st = run.status.as_ref().unwrap();
        assert_eq!(
            (st.phase, st.exit_code),
            (Some(Phase::Completed), Some(3)),
            "{}",
            describe(&run)
        );
    }
}

#[tokio::test]
async fn stdin_and_args_reach_the_program() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-stdin").await;
    let program = Program {
        python: "import sys\nprint(' '.join([sys.stdin.read().strip().upper(), *sys.argv[1:]]))",
        node: "const s = require('fs').readFileSync(0, 'utf8').trim().toUpperCase(); console.log([s, ...process.argv.slice(2)].join(' '))",
        ruby: "puts [STDIN.read.strip.upcase, *ARGV].join(' ')",
        php: "<?php echo implode(' ', array_merge([strtoupper(trim(stream_get_contents(STDIN)))], array_slice($argv, 1))), \"\\n\";",
    };
    let runs = run_all(&ns, &program, |s| {
        s.stdin = Some("hello\n".into());
        s.args = vec!["a b".into(), "c".into()];
    })
    .await;
    for run in runs {
        assert_eq!(stdout(&run), "HELLO a b c\n", "{}", describe(&run));
    }
}

#[tokio::test]
async fn a_timeout_ends_the_run_as_timed_out_close_to_its_limit() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-timeout").await;
    let program = Program {
        python: "import time\nprint('started', flush=True)\nwhile True: time.sleep(1)",
        node: "console.log('started'); setInterval(() => {}, 1000)",
        ruby: "$stdout.sync = true; puts 'started'; loop { sleep 1 }",
        php: "<?php echo \"started\\n\"; flush(); while (true) { sleep(1); }",
    };
    let started = Instant::now();
    // 5 s: time for each interpreter to start and print even while the file's fork bomb
    // test starves the node (with 2 s, a Node.js run once got 167 ms of CPU in its 2 s and
    // printed nothing).
    let runs = run_all(&ns, &program, |s| s.limits.timeout_ms = Some(5000)).await;
    // All four at once, each with a 5 s limit: far from the pod's 35 s backstop.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
    for run in runs {
        let st = run.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(Phase::TimedOut), "{}", describe(&run));
        assert_eq!(
            st.reason.map(|r| r.as_str()),
            Some("timed_out"),
            "{}",
            describe(&run)
        );
        let wall = st.usage.as_ref().unwrap().wall_ms;
        assert!(
            (5000..6000).contains(&wall),
            "wall {wall} ms: {}",
            describe(&run)
        );
        assert_eq!(
            stdout(&run),
            "started\n",
            "output before the timeout is kept: {}",
            describe(&run)
        );
    }
}

#[tokio::test]
async fn a_memory_bomb_fails_the_run_as_oom_killed() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-oom").await;
    let program = Program {
        python: "x = []\nwhile True: x.append(bytearray(8 * 1024 * 1024))",
        node: "const a = []; while (true) { a.push(Buffer.alloc(8 * 1024 * 1024, 1)); }",
        ruby: "a = []; loop { a << ('x' * 8 * 1024 * 1024) }",
        php: "<?php ini_set('memory_limit', '-1'); $a = []; while (true) { $a[] = str_repeat('x', 8 * 1024 * 1024); }",
    };
    let runs = run_all(&ns, &program, |s| {
        s.limits.memory_mb = Some(128);
        s.limits.timeout_ms = Some(30_000);
    })
    .await;
    for run in runs {
        let st = run.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(Phase::Failed), "{}", describe(&run));
        assert_eq!(
            st.reason.map(|r| r.as_str()),
            Some("oom_killed"),
            "{}",
            describe(&run)
        );
    }
}

#[tokio::test]
async fn output_over_the_cap_is_truncated_and_flagged() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-cap").await;
    let program = Program {
        python: "print('x' * 100000)",
        node: "console.log('x'.repeat(100000))",
        ruby: "puts 'x' * 100000",
        php: "<?php echo str_repeat('x', 100000);",
    };
    for run in run_all(&ns, &program, |s| s.limits.max_output_bytes = Some(1000)).await {
        let st = run.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(Phase::Completed), "{}", describe(&run));
        assert!(st.stdout_truncated, "{}", describe(&run));
        assert_eq!(stdout(&run), "x".repeat(1000), "{}", describe(&run));
    }
}

#[tokio::test]
async fn files_written_to_outputs_are_stored_with_their_bytes_and_sha256() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-files").await;
    let program = Program {
        python: "open('outputs/result.txt', 'w').write('artifact from python')\nimport os; os.makedirs('outputs/sub'); open('outputs/sub/b.bin', 'wb').write(bytes(range(256)) * 40)",
        node: "const fs = require('fs'); fs.writeFileSync('outputs/result.txt', 'artifact from node'); fs.mkdirSync('outputs/sub'); fs.writeFileSync('outputs/sub/b.bin', Buffer.from(Array.from({length: 10240}, (_, i) => i % 256)))",
        ruby: "File.write('outputs/result.txt', 'artifact from ruby'); Dir.mkdir('outputs/sub'); File.binwrite('outputs/sub/b.bin', (0..255).to_a.pack('C*') * 40)",
        php: "<?php file_put_contents('outputs/result.txt', 'artifact from php'); mkdir('outputs/sub'); file_put_contents('outputs/sub/b.bin', str_repeat(implode(array_map('chr', range(0, 255))), 40));",
    };
    let store = codeinterp_store::Store::open(run_dir().join("storage").to_str().unwrap()).unwrap();
    let binary: Vec<u8> = (0..10240).map(|i| (i % 256) as u8).collect();
    for run in run_all(&ns, &program, |_| {}).await {
        let st = run.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(Phase::Completed), "{}", describe(&run));
        assert_eq!(st.artifacts.len(), 2, "{}", describe(&run));
        for a in &st.artifacts {
            let expected = match a.name.as_str() {
                "result.txt" => {
                    format!("artifact from {}", run.spec.language.as_str()).into_bytes()
                }
                "sub/b.bin" => binary.clone(),
                other => panic!("unexpected artifact {other}"),
            };
            let stored = store
                .get_file_bytes(&format!("_ns-{}", ns.name), &a.id)
                .await
                .unwrap();
            assert_eq!(
                stored.as_ref(),
                &expected[..],
                "{} {}",
                run.spec.language.as_str(),
                a.name
            );
            assert_eq!(a.bytes, expected.len() as u64);
            assert_eq!(a.sha256, hex::encode(Sha256::digest(&expected)));
        }
        let record = store
            .get_run(
                &format!("_ns-{}", ns.name),
                &ns.name,
                run.metadata.uid.as_deref().unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.phase, Phase::Completed);
        assert_eq!(record.artifacts.len(), 2);
    }
}

#[tokio::test]
async fn network_attempts_from_a_run_fail_while_the_same_attempt_from_a_plain_pod_succeeds() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-net").await;
    let node = node_ip(&client).await;
    let host = HostListener::start().await;
    let listener = start_pod(
        &ns.pods(),
        json!({
            "metadata": {"name": "listener"},
            "spec": {"containers": [{
                "name": "main", "image": runner_image("python"), "imagePullPolicy": "Never",
                "command": ["python3", "-c",
                    "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 8080)); s.listen()\nwhile True:\n    c,_=s.accept(); c.close()"]
            }]}
        }),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let targets = vec![
        format!("{}:8080", pod_ip(&listener)),
        format!("{node}:{}", host.port),
        format!("{node}:6443"),
    ];
    let program = Program {
        python: "import socket, sys\nfor t in sys.argv[1:]:\n    h, p = t.rsplit(':', 1)\n    try:\n        socket.create_connection((h, int(p)), timeout=3).close(); print(t, 'connected')\n    except OSError:\n        print(t, 'blocked')",
        node: "const net = require('net');\n(async () => { for (const t of process.argv.slice(2)) { const i = t.lastIndexOf(':'); const r = await new Promise(res => { let s; try { s = net.connect({host: t.slice(0, i), port: +t.slice(i + 1)}); } catch (e) { return res('blocked'); } s.setTimeout(3000, () => { s.destroy(); res('blocked'); }); s.on('connect', () => { s.destroy(); res('connected'); }); s.on('error', () => res('blocked')); }); console.log(t, r); } })()",
        ruby: "require 'socket'\nARGV.each do |t|\n  h, p = t.split(':')\n  begin\n    Socket.tcp(h, p.to_i, connect_timeout: 3).close; puts \"#{t} connected\"\n  rescue StandardError\n    puts \"#{t} blocked\"\n  end\nend",
        php: "<?php foreach (array_slice($argv, 1) as $t) { [$h, $p] = explode(':', $t); $s = @fsockopen($h, (int)$p, $en, $es, 3); echo $t, $s ? ' connected' : ' blocked', \"\\n\"; if ($s) fclose($s); }",
    };
    // Control: the same Python program in a plain pod (no policy, no seccomp profile) connects.
    let mut control_cmd = vec!["python3".to_string(), "-c".into(), program.python.into()];
    control_cmd.extend(targets.iter().cloned());
    let pods = ns.pods();
    let control = run_pod_to_end(
        &pods,
        json!({"metadata": {"name": "control"}, "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": runner_image("python"), "imagePullPolicy": "Never", "command": control_cmd}]}}),
        WITHIN,
    );
    let runs = run_all(&ns, &program, |s| s.args = targets.clone());
    let (control, runs) = tokio::join!(control, runs);
    control.unwrap();
    let control_log = pod_log(&ns.pods(), "control").await.unwrap();
    assert_eq!(
        control_log.matches(" connected").count(),
        3,
        "control: {control_log}"
    );
    for run in runs {
        let out = stdout(&run);
        assert_eq!(
            out.matches(" blocked").count(),
            3,
            "{out}: {}",
            describe(&run)
        );
        assert!(!out.contains("connected"), "{}", describe(&run));
    }
}

#[tokio::test]
async fn the_program_cannot_write_the_root_filesystem_but_can_write_work() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-rofs").await;
    let program = Program {
        python: "for p in ['/usr/local/x', '/etc/x', '/work/x']:\n    try:\n        open(p, 'w').write('y'); print(p, 'written')\n    except OSError:\n        print(p, 'denied')",
        node: "for (const p of ['/usr/local/x', '/etc/x', '/work/x']) { try { require('fs').writeFileSync(p, 'y'); console.log(p, 'written'); } catch (e) { console.log(p, 'denied'); } }",
        ruby: "['/usr/local/x', '/etc/x', '/work/x'].each { |p| begin; File.write(p, 'y'); puts \"#{p} written\"; rescue SystemCallError; puts \"#{p} denied\"; end }",
        php: "<?php foreach (['/usr/local/x', '/etc/x', '/work/x'] as $p) { echo $p, @file_put_contents($p, 'y') === false ? ' denied' : ' written', \"\\n\"; }",
    };
    for run in run_all(&ns, &program, |_| {}).await {
        assert_eq!(
            stdout(&run),
            "/usr/local/x denied\n/etc/x denied\n/work/x written\n",
            "{}",
            describe(&run)
        );
    }
}

#[tokio::test]
async fn the_program_is_not_root_and_holds_no_token_or_platform_environment() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-ident").await;
    let program = Program {
        python: "import os\nprint(f\"uid={os.getuid()} token={str(os.path.exists('/var/run/secrets/kubernetes.io')).lower()} kubeenv={sum('KUBERNETES' in k for k in os.environ)}\")",
        node: "console.log(`uid=${process.getuid()} token=${require('fs').existsSync('/var/run/secrets/kubernetes.io')} kubeenv=${Object.keys(process.env).filter(k => k.includes('KUBERNETES')).length}`)",
        ruby: "puts \"uid=#{Process.uid} token=#{File.exist?('/var/run/secrets/kubernetes.io')} kubeenv=#{ENV.keys.count { |k| k.include?('KUBERNETES') }}\"",
        php: "<?php echo 'uid=', posix_getuid(), ' token=', file_exists('/var/run/secrets/kubernetes.io') ? 'true' : 'false', ' kubeenv=', count(array_filter(array_keys(getenv()), fn($k) => str_contains($k, 'KUBERNETES'))), \"\\n\";",
    };
    for run in run_all(&ns, &program, |_| {}).await {
        assert_eq!(
            stdout(&run),
            "uid=65532 token=false kubeenv=0\n",
            "{}",
            describe(&run)
        );
    }
}

#[tokio::test]
async fn a_syscall_the_profile_denies_fails_in_a_run_and_works_in_a_plain_pod() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-syscall").await;
    // unshare(CLONE_NEWUSER): allowed to unprivileged users by this kernel, denied by the
    // runner profile.
    let program = Program {
        python: "import os\ntry:\n    os.unshare(os.CLONE_NEWUSER); print('allowed')\nexcept OSError:\n    print('denied')",
        node: "const r = require('child_process').spawnSync('unshare', ['-U', 'true']); console.log(r.status === 0 ? 'allowed' : 'denied')",
        ruby: "puts(system('unshare', '-U', 'true', err: File::NULL) ? 'allowed' : 'denied')",
        php: "<?php exec('unshare -U true 2>/dev/null', $o, $rc); echo $rc === 0 ? \"allowed\\n\" : \"denied\\n\";",
    };
    let pods = ns.pods();
    let control = run_pod_to_end(
        &pods,
        json!({"metadata": {"name": "control"}, "spec": {"restartPolicy": "Never",
            "securityContext": {"runAsUser": 65532, "seccompProfile": {"type": "Unconfined"}},
            "containers": [{"name": "main", "image": runner_image("python"), "imagePullPolicy": "Never",
                "command": ["python3", "-c", program.python]}]}}),
        WITHIN,
    );
    let (control, runs) = tokio::join!(control, run_all(&ns, &program, |_| {}));
    control.unwrap();
    assert_eq!(
        pod_log(&ns.pods(), "control").await.unwrap().trim(),
        "allowed"
    );
    for run in runs {
        assert_eq!(stdout(&run), "denied\n", "{}", describe(&run));
    }
}

#[tokio::test]
async fn a_fork_bomb_is_contained_while_a_concurrent_run_still_succeeds() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-fork").await;
    let bomb = Program {
        python: "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        node: "const {spawn} = require('child_process'); setInterval(() => { for (let i = 0; i < 50; i++) { try { spawn('sleep', ['100']).on('error', () => {}); } catch (e) {} } }, 5)",
        ruby: "loop { begin; fork { sleep 100 }; rescue StandardError; end }",
        php: "<?php while (true) { @proc_open('sleep 100', [], $pipes); }",
    };
    let bystander = Program {
        python: "import time\ntime.sleep(2)\nprint('still fine')",
        node: "setTimeout(() => console.log('still fine'), 2000)",
        ruby: "sleep 2; puts 'still fine'",
        php: "<?php sleep(2); echo \"still fine\\n\";",
    };
    let bombs = run_all(&ns, &bomb, |s| s.limits.timeout_ms = Some(6000));
    let bystanders = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        run_all(&ns, &bystander, |_| {}).await
    };
    let (bombs, bystanders) = tokio::join!(bombs, bystanders);
    for run in bombs {
        let st = run.status.as_ref().unwrap();
        assert!(
            matches!(st.phase, Some(Phase::TimedOut) | Some(Phase::Failed)),
            "{}",
            describe(&run)
        );
    }
    for run in bystanders {
        let st = run.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(Phase::Completed), "{}", describe(&run));
        assert_eq!(stdout(&run), "still fine\n", "{}", describe(&run));
    }
}

#[tokio::test]
async fn a_coderun_applied_with_kubectl_can_be_awaited_with_kubectl_wait() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-kubectl").await;
    let manifest = format!(
        "apiVersion: codeinterp.dev/v1alpha1\nkind: CodeRun\nmetadata:\n  name: hello\n  namespace: {}\nspec:\n  language: python\n  code: print(1+1)\n  limits:\n    timeoutMs: 3000\n",
        ns.name
    );
    let path = std::env::temp_dir().join(format!("{}.yaml", ns.name));
    std::fs::write(&path, manifest).unwrap();
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(kubectl())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    kubectl(&["apply", "-f", path.to_str().unwrap()]);
    kubectl(&[
        "wait",
        "-n",
        &ns.name,
        "--for=jsonpath={.status.phase}=Completed",
        "coderun/hello",
        "--timeout=90s",
    ]);
    let table = kubectl(&["get", "coderuns", "-n", &ns.name]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "LANGUAGE", "PHASE", "EXIT", "DURATION", "AGE"]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["hello", "python", "Completed", "0"]);
    let stdout = kubectl(&[
        "get",
        "cr",
        "hello",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.status.stdoutPreview}",
    ]);
    assert_eq!(stdout, "2\n");
    // Events are recorded a moment after each step, off the run's critical path.
    let mut described = String::new();
    let all_there = eventually(Duration::from_secs(10), || {
        described = kubectl(&["describe", "coderun", "hello", "-n", &ns.name]);
        ["PodCreated", "Started", "Completed"]
            .iter()
            .all(|r| described.contains(r))
    })
    .await;
    assert!(all_there, "describe lacks an event:\n{described}");
}
