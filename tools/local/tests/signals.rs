//! `scripts/demo` is stopped the way a service manager or a person in another terminal stops it: SIGINT (or
//! SIGTERM) to the script's pid alone, not to its process group. The script runs the runner through
//! `run_child` (scripts/lib.sh), which must pass the signal on: the runner then stops, prints its final
//! reconciliation, and the script exits with the runner's status, leaving no runner behind.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clickpacer::testing::{TestAws, TestDb, unique_suffix};

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

fn runner_alive(prefix: &str) -> bool {
    Command::new("pgrep").args(["-f", &format!("names-prefix {prefix}")]).output().unwrap().status.success()
}

async fn a_signal_to_the_scripts_pid_stops_the_runner(name: &str) {
    let db = TestDb::new().await;
    let _aws = TestAws::new().await; // the local endpoint's variables are set
    let prefix = format!("sig-{}", unique_suffix());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut script = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1/scripts/lib.sh"; trap stop_started_services EXIT; run_child "$2" run --fast --names-prefix "$3""#)
        .args(["run_child", root, env!("CARGO_BIN_EXE_clickpacer-local"), &prefix])
        .env("DATABASE_URL", &db.config.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Lines as they come, on a thread (reads block).
    let stdout = script.stdout.take().unwrap();
    let (lines, seen) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = lines.send(std::mem::take(&mut line));
        }
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
    });
    let mut output = String::new();
    let until = Instant::now() + Duration::from_secs(120);
    while !output.contains("partners: simulator at") {
        let left = until.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => output.push_str(&line),
            Err(_) => {
                let _ = script.kill();
                panic!("the runner did not start: {output}")
            }
        }
    }
    assert!(runner_alive(&prefix), "the runner runs under the script");

    signal(script.id(), name);
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = script.kill();
            let _ = Command::new("pkill").args(["-f", &format!("names-prefix {prefix}")]).status();
            panic!("the script did not stop on SIG{name} to its pid: {output}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = seen.recv_timeout(Duration::from_secs(5)) {
        output.push_str(&line);
    }
    assert!(status.success(), "the runner's own status: {status:?}\n{output}");
    assert!(output.contains("Campaigns: accepted = "), "the final reconciliation is printed: {output}");
    assert!(output.contains("clicks accepted twice"), "with the partners' line: {output}");
    assert!(!runner_alive(&prefix), "no runner is left behind");
}

#[tokio::test]
async fn sigint_to_the_scripts_pid_stops_the_runner_and_prints_the_reconciliation() {
    a_signal_to_the_scripts_pid_stops_the_runner("INT").await;
}

#[tokio::test]
async fn sigterm_to_the_scripts_pid_stops_the_runner_too() {
    a_signal_to_the_scripts_pid_stops_the_runner("TERM").await;
}
