//! Compiles `proto/paygate/v1/*.proto` into Rust (tonic + prost), with a descriptor set for reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build does not register the protos with cargo; without this, proto edits are ignored.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");

    // The schema a build needs: its newest migration, the same in both dialects.
    let newest = |dialect: &str| -> Result<u32, Box<dyn std::error::Error>> {
        let mut newest = 0;
        for entry in fs::read_dir(format!("migrations/{dialect}"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(version) = name.split('_').next().and_then(|v| v.parse().ok()) {
                newest = newest.max(version);
            }
        }
        Ok(newest)
    };
    let schema = newest("postgres")?;
    if newest("sqlite")? != schema {
        return Err("migrations/postgres and migrations/sqlite must end at the same version".into());
    }
    println!("cargo:rustc-env=PAYGATE_SCHEMA_VERSION={schema}");

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc) };

    let mut protos: Vec<PathBuf> = fs::read_dir("proto/paygate/v1")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Ordered maps encode deterministically, so a request's fingerprint (idempotency) is stable.
        .btree_map(".")
        // Undecodable requests are INVALID_ARGUMENT (the sender's mistake), not INTERNAL.
        .codec_path("crate::proto::codec::StrictCodec")
        .file_descriptor_set_path(out_dir.join("paygate_descriptor.bin"))
        .compile_protos(&protos, &[PathBuf::from("proto"), include])?;
    Ok(())
}
