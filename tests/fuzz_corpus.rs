//! Replays the corpus the fuzz targets keep in `fuzz/corpus/<target>/` through the same checks
//! the targets run (`fuzz/checks.rs`), so that every kept input is a regression test of an
//! ordinary `cargo test` on stable. See "Fuzzing" in README.md.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn check_of(target: &str) -> checks::Check {
    checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check for target {target}"))
        .1
}

/// The files of `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every file of `dir`, naming the file that fails.
fn replay_dir(target: &str, check: checks::Check, dir: &Path) -> usize {
    let files = files(dir);
    for file in &files {
        let data = fs::read(file).expect("a corpus file");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            panic!("fuzz input {} fails the {target} check", file.display());
        }
    }
    files.len()
}

fn replay(target: &str) {
    let dir = fuzz_dir().join("corpus").join(target);
    let n = replay_dir(target, check_of(target), &dir);
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn frame_reader() {
    replay("frame_reader");
}

#[test]
fn wire_decode() {
    replay("wire_decode");
}

#[test]
fn gossip_op() {
    replay("gossip_op");
}

#[test]
fn ticket() {
    replay("ticket");
}

#[test]
fn manifest() {
    replay("manifest");
}

#[test]
fn proof_verify() {
    replay("proof_verify");
}

#[test]
fn proof_apply() {
    replay("proof_apply");
}

#[test]
fn storage_rows() {
    replay("storage_rows");
}

#[test]
fn storage_header() {
    replay("storage_header");
}

#[test]
fn hostile_node() {
    replay("hostile_node");
}

/// Every target in `fuzz/Cargo.toml` has a check, a test above and a corpus, and the other
/// way round.
#[test]
fn every_target_is_replayed() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "iroh-hypercore-fuzz")
        .collect();
    let mut names: Vec<&str> = checks::TARGETS.iter().map(|(n, _)| *n).collect();
    bins.sort_unstable();
    names.sort_unstable();
    assert_eq!(bins, names);
    let this = fs::read_to_string(file!()).unwrap_or_default();
    for name in names {
        assert!(
            fuzz_dir().join("corpus").join(name).is_dir(),
            "no corpus for {name}"
        );
        if !this.is_empty() {
            assert!(
                this.contains(&format!("replay(\"{name}\")")),
                "no test replays {name}"
            );
        }
    }
}

/// The seed inputs pass their checks, and the writer's proofs verify against the reader
/// states they were made for, and apply to reader cores in those states.
#[test]
fn seeds_pass() {
    for (target, data) in checks::seeds() {
        check_of(target)(&data);
    }
    for (i, seed) in checks::fixture().seeds.iter().enumerate() {
        assert!(
            checks::proof_verify(seed),
            "the writer's proof {i} verifies"
        );
        assert!(checks::proof_apply(seed), "the writer's proof {i} applies");
    }
}

/// Writes the seed inputs into `fuzz/corpus/<target>/seed-<n>`, to start a corpus:
/// `cargo test --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes files; run by hand to start a corpus"]
fn write_seeds() {
    let mut n = std::collections::HashMap::new();
    for (target, data) in checks::seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).expect("a corpus directory");
        let i = n.entry(target).or_insert(0);
        fs::write(dir.join(format!("seed-{i:03}")), data).expect("a seed file");
        *i += 1;
    }
}

/// Replays the crashes kept in `fuzz/regressions/<target>/` (inputs that made a target fail
/// and are not fixed yet): `cargo test --test fuzz_corpus -- --ignored regressions`. Once one
/// passes, move it into the target's corpus.
#[test]
#[ignore = "known crashes, kept until they are fixed"]
fn regressions() {
    let dir = fuzz_dir().join("regressions");
    let Ok(targets) = fs::read_dir(&dir) else {
        return;
    };
    for entry in targets {
        let path = entry.expect("a directory entry").path();
        if !path.is_dir() {
            continue;
        }
        let target = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let check = checks::REGRESSIONS
            .iter()
            .find(|(name, _)| *name == target)
            .map_or_else(|| check_of(target), |(_, check)| *check);
        replay_dir(target, check, &path);
    }
}
