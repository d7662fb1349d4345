//! The rules ARCHITECTURE.md writes as absences, checked on the sources (rust-analyzer's
//! `tidy.rs` habit): a rule a change breaks fails here, with the file that broke it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` (relative to the root) whose name ends with one of `exts`.
fn files(dir: &str, exts: &[&str]) -> Vec<PathBuf> {
    fn walk(p: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "corpus" | "artifacts" | ".git") {
                    walk(&path, exts, out);
                }
            } else if exts.iter().any(|x| name.ends_with(x)) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), exts, &mut out);
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// The Rust sources of the workspace, the load-test kit and the fuzz targets.
fn rust_sources() -> Vec<PathBuf> {
    [
        "crates",
        "src",
        "tests",
        "benches",
        "loadtest/src",
        "loadtest/tests",
        "fuzz/fuzz_targets",
    ]
    .iter()
    .flat_map(|d| files(d, &[".rs"]))
    .collect()
}

/// Code lines of a Rust file: comments (`//`) dropped, so a rule about code is not tripped by
/// a sentence about it.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let code = match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        };
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// The `[dependencies]` section of a manifest: the crate names it lists.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once(['=', '.']) {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                out.push(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn postgres_is_linked_by_the_store_and_settlement_only() {
    for manifest in files("crates", &["Cargo.toml"]) {
        let deps = dependencies(&manifest);
        let owner = ["crates/settlement/Cargo.toml", "crates/store/Cargo.toml"]
            .contains(&rel(&manifest).as_str());
        assert_eq!(
            deps.iter().any(|d| d == "tokio-postgres"),
            owner,
            "{}: tokio-postgres belongs to the store (entitlements) and settlement (the usage ledger) crates only",
            rel(&manifest)
        );
    }
    // The binary links every crate, so it links PostgreSQL through them only.
    assert!(!dependencies(&root().join("Cargo.toml")).contains(&"tokio-postgres".to_owned()));
}

/// The crates depend on each other in one direction: the contract crates (core, usage) and
/// ops on none of the others; the gateway, settlement and stub never on each other.
#[test]
fn crates_depend_in_one_direction() {
    let allowed: &[(&str, &[&str])] = &[
        ("core", &[]),
        ("usage", &[]),
        ("ops", &[]),
        ("store", &["tollgate-core"]),
        (
            "gateway",
            &[
                "tollgate-core",
                "tollgate-usage",
                "tollgate-ops",
                "tollgate-store",
            ],
        ),
        (
            "settlement",
            &[
                "tollgate-core",
                "tollgate-usage",
                "tollgate-ops",
                "tollgate-store",
            ],
        ),
        (
            "admin",
            &[
                "tollgate-core",
                "tollgate-ops",
                "tollgate-settlement",
                "tollgate-store",
            ],
        ),
        ("stub", &["tollgate-core", "tollgate-ops"]),
    ];
    for (krate, may) in allowed {
        let manifest = root().join("crates").join(krate).join("Cargo.toml");
        for d in dependencies(&manifest) {
            if d.starts_with("tollgate-") {
                assert!(
                    may.contains(&d.as_str()),
                    "crates/{krate} depends on {d}: not allowed (ARCHITECTURE.md, Code map)"
                );
            }
        }
    }
}

#[test]
fn unsafe_lives_in_the_spool_segment_only() {
    // (This file names the words it looks for.)
    let allowed = [
        "crates/gateway/src/metering/segment.rs",
        "tests/alloc.rs",
        "tests/tidy.rs",
    ];
    for f in rust_sources() {
        let text = std::fs::read_to_string(&f).unwrap();
        if allowed.contains(&rel(&f).as_str()) {
            continue;
        }
        for (n, line) in code_lines(&text) {
            let t = line.trim_start();
            let is_unsafe = ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
                .iter()
                .any(|u| t.contains(u))
                || t.contains("allow(unsafe_code)");
            assert!(
                !is_unsafe,
                "{}:{n}: unsafe outside metering::segment",
                rel(&f)
            );
        }
    }
}

#[test]
fn admission_never_awaits() {
    for f in files("crates/gateway/src/admission", &[".rs"]) {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in code_lines(&text) {
            assert!(
                !line.contains(".await") && !line.contains("async "),
                "{}:{n}: admission is synchronous (it never awaits I/O)",
                rel(&f)
            );
        }
    }
}

#[test]
fn every_source_file_says_what_it_is_for() {
    for f in rust_sources() {
        let text = std::fs::read_to_string(&f).unwrap();
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            first.starts_with("//!"),
            "{}: the first line is not a `//!` line saying what the file is for",
            rel(&f)
        );
    }
}

/// The repository stands on its own: nothing in it sends a reader to files it does not hold.
#[test]
fn nothing_points_outside_the_repository() {
    let mut texts: Vec<PathBuf> = rust_sources();
    for d in ["docs", "deploy", "loadtest", "config", "scripts", ".ci"] {
        texts.extend(files(
            d,
            &[".md", ".toml", ".sh", ".yaml", ".yml", ".py", "run"],
        ));
    }
    texts.extend(["README.md", "ARCHITECTURE.md", "Cargo.toml"].map(|f| root().join(f)));
    // The needles are assembled so that this file does not trip over itself.
    let needles = [
        format!("../{}/", "shared"),
        format!("{}_API.md", "TC"),
        format!("{}.md", "DOMAIN"),
        format!("{}.md", "LESSONS"),
    ];
    for f in texts {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for needle in &needles {
                assert!(
                    !line.contains(needle.as_str()),
                    "{}:{}: points to {needle}, which is not in the repository (docs/ has it in the project's words)",
                    rel(&f),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn main_is_a_page() {
    let text = std::fs::read_to_string(root().join("src/main.rs")).unwrap();
    let n = text.lines().count();
    assert!(
        n <= 80,
        "src/main.rs has {n} lines: it parses the command line and calls each crate"
    );
}
