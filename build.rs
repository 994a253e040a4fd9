//! Records the git commit famstream is built from as `FAMSTREAM_COMMIT` ("unknown" outside a
//! git checkout), so every JSON report can say which code produced it (`Runtime::provenance`).
use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FAMSTREAM_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    // Run again when HEAD moves: HEAD itself (a checkout) and the branch's ref (a commit), or
    // packed-refs where the ref is packed. Only existing files: a missing one would rerun always.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let mut watch = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{dir}/{r}"));
        }
        for w in watch.iter().filter(|w| Path::new(w).exists()) {
            println!("cargo:rerun-if-changed={w}");
        }
    }
}
