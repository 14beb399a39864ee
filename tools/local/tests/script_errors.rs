//! The scripts' way of giving up (`die` in scripts/lib.sh): the reason on stderr and a failing status, whatever
//! step failed (a service that would not start, a failed build, a missing artifact).

use std::process::Command;

#[test]
fn a_script_that_gives_up_says_why_and_fails() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1/scripts/lib.sh"; die "sam build failed"; echo "went on""#)
        .args(["die", root])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sam build failed"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("went on"));
}
