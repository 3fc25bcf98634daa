//! The controller gate's actual rules for Rust programs: `contrib/kubevirt/cmd/gate-decide`,
//! built once with `go build` and cached under the Cargo target directory, keyed by a hash
//! of its sources (go.mod, go.sum, gate/*.go, cmd/gate-decide/*.go), so a change to the
//! gate rebuilds it and nothing else does.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The gate's decision, as gate-decide prints it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    pub message: String,
    pub requeue_after_seconds: f64,
    /// How the gate judged the agent's lease; empty when a rule before the lease decided.
    pub lease: String,
}

/// Cargo's target directory: the nearest ancestor of this executable with Cargo's
/// `CACHEDIR.TAG` (tests: target/debug/deps, examples: target/release/examples).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(REPO).join("target"))
}

fn sources_hash(module: &Path) -> u64 {
    let mut files: Vec<PathBuf> = vec![module.join("go.mod"), module.join("go.sum")];
    for dir in ["gate", "cmd/gate-decide"] {
        for e in fs::read_dir(module.join(dir)).unwrap_or_else(|e| panic!("{}/{dir}: {e}", module.display())) {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "go") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = DefaultHasher::new();
    for f in &files {
        f.strip_prefix(module).unwrap().hash(&mut h);
        fs::read(f).unwrap().hash(&mut h);
    }
    h.finish()
}

/// The gate-decide binary: built on first use, then reused (by this process and the next).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let module = Path::new(REPO).join("contrib/kubevirt");
        let dir = target_dir().join("gate-decide").join(format!("{:016x}", sources_hash(&module)));
        let bin = dir.join("gate-decide");
        if bin.is_file() {
            return bin;
        }
        fs::create_dir_all(&dir).unwrap();
        // Built aside and renamed into place: a concurrent build elsewhere is harmless.
        let tmp = dir.join(format!("gate-decide.{}.tmp", std::process::id()));
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&tmp)
            .arg("./cmd/gate-decide")
            .current_dir(&module)
            .stdin(Stdio::null())
            .output()
            .expect("run `go build` (Go is needed for contrib/kubevirt and the control plane)");
        assert!(out.status.success(), "go build ./cmd/gate-decide failed:\n{}", String::from_utf8_lossy(&out.stderr));
        fs::rename(&tmp, &bin).unwrap();
        bin
    })
    .clone()
}

/// Asks the gate about one case (the JSON object gate-decide reads).
pub fn decide(input: &Value) -> Decision {
    use std::io::Write;
    let mut child = Command::new(binary())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gate-decide");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gate-decide refused its input ({}): {}\ninput: {input}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("gate-decide prints JSON");
    Decision {
        allowed: v["allowed"].as_bool().expect("allowed"),
        reason: v["reason"].as_str().unwrap_or_default().to_string(),
        message: v["message"].as_str().unwrap_or_default().to_string(),
        requeue_after_seconds: v["requeueAfterSeconds"].as_f64().unwrap_or_default(),
        lease: v["lease"].as_str().unwrap_or_default().to_string(),
    }
}
