//! Plugin libraries for the tests, built once per test run: the C fixtures with gcc, the
//! Rust ones (the panicking fixture and the simulator as a `.so`) with a nested cargo build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The C plugins the tests use, by the name of their source file (without `.c`).
pub const C_FIXTURES: [&str; 6] = [
    "wrong_abi",
    "no_symbol",
    "bad_describe",
    "hang",
    "init_fails",
    "garbage",
];

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the C plugins are compiled: a fixed directory under cargo's scratch space for
/// integration tests. Each library is written under a unique name and renamed into place,
/// so concurrent test runs never see a half-written file.
fn c_out_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("it-c-plugins");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        dir
    })
}

fn compile_c(source: &Path, lib_name: &str) -> PathBuf {
    let out = c_out_dir().join(format!("lib{lib_name}.so"));
    let tmp = c_out_dir().join(format!(".lib{lib_name}.{}.so", std::process::id()));
    crate::harness::run_ok(
        Command::new("gcc")
            .current_dir(manifest_dir())
            .args([
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-shared",
                "-fPIC",
                "-I",
                "plugin-api/include",
            ])
            .arg(source)
            .arg("-o")
            .arg(&tmp)
            .arg("-lpthread"),
        &format!(
            "gcc on {} (needed to build the C plugins)",
            source.display()
        ),
    );
    std::fs::rename(&tmp, &out)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), out.display()));
    out
}

/// The compiled C plugins: the fixtures by source name and `example_c`.
fn c_plugins() -> &'static Vec<(String, PathBuf)> {
    static BUILT: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut built = Vec::new();
        for name in C_FIXTURES {
            let src = manifest_dir()
                .join("tests/fixtures/plugins")
                .join(format!("{name}.c"));
            built.push((name.to_owned(), compile_c(&src, name)));
        }
        let example = manifest_dir().join("plugins/example-c/example.c");
        built.push(("example_c".to_owned(), compile_c(&example, "example_c")));
        built
    })
}

/// A compiled C fixture (`wrong_abi`, `hang`, …) or `example_c`: `lib<name>.so`.
pub fn c_plugin(name: &str) -> PathBuf {
    c_plugins()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| panic!("no C plugin named {name}"))
}

/// The C example backend (`example-c`).
pub fn example_c() -> PathBuf {
    c_plugin("example_c")
}

/// The cargo output directory of this build (`target/debug`): where the orchard binary is.
fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_orchard"))
        .parent()
        .expect("the orchard binary has a directory")
        .to_owned()
}

/// Builds `packages` with a nested `cargo build` into this build's target directory and
/// profile; returns the profile directory. `what` and `hint` name them in a failure.
fn cargo_build(packages: &[&str], what: &str, hint: &str) -> PathBuf {
    let profile = profile_dir();
    let target_dir = profile
        .parent()
        .expect("the profile directory has a parent")
        .to_owned();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(manifest_dir()).args(["build", "--quiet"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.arg("--target-dir").arg(&target_dir);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    crate::harness::run_ok(&mut cmd, &format!("cargo build of {what}{hint}"));
    profile
}

/// Builds the Rust plugin crates once; returns the profile directory holding them.
fn rust_plugins() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo_build(
            &["orchard-fixture-panic", "orchard-plugin-simulator"],
            "the plugin crates",
            "",
        )
    })
}

fn rust_plugin(file: &str) -> PathBuf {
    let path = rust_plugins().join(file);
    assert!(
        path.is_file(),
        "{} was not produced by the plugin build",
        path.display()
    );
    path
}

/// The `panicky` fixture: `bulk_state` panics.
pub fn panic_plugin() -> PathBuf {
    rust_plugin("liborchard_fixture_panic.so")
}

/// The simulator built as a loadable plugin.
pub fn simulator_plugin() -> PathBuf {
    rust_plugin("liborchard_plugin_simulator.so")
}

/// The libvirt plugin, built on its own (it alone needs libvirt-dev).
pub fn libvirt_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile = cargo_build(
                &["orchard-plugin-libvirt"],
                "the libvirt plugin",
                " (it needs pkg-config and libvirt-dev)",
            );
            let so = profile.join("liborchard_plugin_libvirt.so");
            assert!(so.is_file(), "{} was not produced", so.display());
            so
        })
        .clone()
}

/// The containers plugin (it needs nothing from the system to build).
pub fn containers_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile = cargo_build(&["orchard-plugin-containers"], "the containers plugin", "");
            let so = profile.join("liborchard_plugin_containers.so");
            assert!(so.is_file(), "{} was not produced", so.display());
            so
        })
        .clone()
}
