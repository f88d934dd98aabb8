//! Generates the DPDK bindings and builds the C shim.
//!
//! Linking is shared, through pkg-config (`libdpdk`). Why shared and not static:
//! Debian's EAL then loads every PMD it ships from its plugin directory
//! (`pmds-23.0`), so the same binary drives net_null/net_pcap/net_tap/net_memif
//! in tests and any Debian-supported NIC on bare metal, and `dpdk-testpmd` (the
//! benchmark peer) runs on exactly the same libraries. A static build was
//! measured 5-8 % faster here; see ARCHITECTURE.md.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("libdpdk")
        .output()
        .unwrap_or_else(|e| panic!("pkg-config not runnable ({e}); run scripts/setup.sh"));
    if !out.status.success() {
        panic!(
            "pkg-config {args:?} libdpdk failed: {}\nInstall DPDK with scripts/setup.sh",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Split on whitespace but keep `-include rte_config.h` as two tokens in order.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    // Every cflag goes to both bindgen and the shim: without -march=corei7
    // the x86 intrinsics in rte_memcpy.h fail to compile.
    let cflags = pkg_config(&["--cflags"]);

    let mut build = cc::Build::new();
    build
        .file("shim.c")
        .include(".")
        .opt_level(3)
        .warnings(false);
    for f in &cflags {
        build.flag(f);
    }
    build.compile("sluice_shim");

    for token in pkg_config(&["--libs"]) {
        if let Some(dir) = token.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = token.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        } else {
            println!("cargo:rustc-link-arg={token}");
        }
    }

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&cflags)
        .clang_arg("-I.")
        .allowlist_function("rte_.*|sluice_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("rte_.*|RTE_.*|RING_F_.*")
        // A packed struct with an unaligned bitfield: bindgen cannot lay it out.
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .derive_default(true)
        .derive_debug(false)
        .opaque_type("rte_gtp_psc_generic_hdr")
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen failed on the DPDK headers");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("write bindings");
}
