//! Build script shared by the Lambda binaries and their `make bench` references:
//! link them as fixed-address (non-PIE) executables on Linux.
//!
//! A position-independent executable is relocated by the loader at every start: the
//! ingester carries about 24,000 relative relocations, so each cold start reads
//! their half-megabyte table and dirties every page of `.data.rel.ro` it patches
//! (about 90 page faults of the 390 to its first poll). Fixed at link time there is
//! nothing to patch. The address-space randomisation given up is the executable's
//! own; libraries, heap and stacks are still randomised, and a Lambda sandbox runs
//! one function.

fn main() {
    // Cargo reruns a script whose own source changed; nothing else here varies.
    println!("cargo:rerun-if-changed=Cargo.toml");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        // Comes after rustc's own `-pie`, and the last of the two wins.
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
