//! tools/setup.sh, the README's first step on a new machine: with the build tools hidden it
//! installs nothing (FAMSTREAM_NO_INSTALL=1 stands for "no root") and stops with one message
//! naming each missing tool and how to install it on every supported system; on this machine,
//! which has everything, it succeeds and prints nothing.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A directory of symlinks to the few tools the script itself uses, and nothing else.
fn bare_path(dir: &Path, tools: &[&str]) {
    for t in tools {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .unwrap();
        let target = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{t} is not on this machine");
        symlink(target.trim(), dir.join(t)).unwrap();
    }
}

#[test]
fn hidden_build_tools_are_named_with_install_lines_and_nothing_runs() {
    let dir = std::env::temp_dir().join(format!("famstream-setup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    bare_path(&dir, &["bash", "dirname", "id", "grep", "cat", "sed"]);
    let out = Command::new(dir.join("bash"))
        .arg(Path::new(ROOT).join("tools/setup.sh"))
        .env_clear()
        .env("PATH", &dir)
        .env("HOME", std::env::var("HOME").unwrap())
        .env("FAMSTREAM_NO_INSTALL", "1")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(out.stdout.is_empty());
    for missing in [
        "Rust (cargo)",
        "cmake",
        "a C++ compiler",
        "python3",
        "pip for python3",
    ] {
        assert!(err.contains(missing), "{missing} not named in: {err}");
    }
    for system in ["Debian/Ubuntu:", "Fedora:", "Arch:", "macOS:"] {
        assert!(err.contains(system), "no {system} line in: {err}");
    }
    assert!(!err.contains("installing"), "it tried to install: {err}");
    assert_eq!(
        err.matches("cannot be built").count(),
        1,
        "one message: {err}"
    );
}

#[test]
fn a_ready_machine_gets_nothing_and_no_output() {
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("tools/setup.sh"))
        .env("FAMSTREAM_NO_INSTALL", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

#[test]
fn an_unknown_argument_is_refused() {
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("tools/setup.sh"))
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}
