//! Builds `embed.c` with the system C compiler against `include/volley.h` and the freshly built
//! `libvolley_ffi.so`, then runs it: a C program that serves, injects through the API, uses the control-plane calls
//! (suppressions, credits, queue retry, event polling), and stops.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn c_program_embeds_volley() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // target/<profile>/deps/c_abi-HASH -> target/<profile>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let lib = profile_dir.join("libvolley_ffi.so");
    assert!(
        lib.exists(),
        "{} missing: build the workspace first",
        lib.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("embed");
    let built = Command::new("cc")
        .arg(manifest.join("tests/embed.c"))
        .arg("-I")
        .arg(manifest.join("include"))
        .arg("-L")
        .arg(&profile_dir)
        .args(["-lvolley_ffi", "-lpthread", "-o"])
        .arg(&program)
        .status()
        .expect("a C compiler (cc)");
    assert!(built.success());
    let (smtp, api) = (free_port(), free_port());
    let config = dir.path().join("volley.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ncores = 1\nspool_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{smtp}\"\n[api]\naddress = \"127.0.0.1:{api}\"\n[routes]\n\"nowhere.invalid\" = \"127.0.0.1:9\"\n[[customer]]\nname = \"acme\"\ncredits = 10\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let out = Command::new(&program)
        .arg(&config)
        .arg(format!("http://127.0.0.1:{api}"))
        .env("LD_LIBRARY_PATH", &profile_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("embed: ok"));
}
