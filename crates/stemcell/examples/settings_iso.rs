//! Write a BOSH agent settings CD-ROM (the stemcell crate's ISO writer, the
//! same bytes the vbox builder gives its build VM), for tools other than
//! opsbake that boot a stemcell: crates/iaas-vbox/bench/run.sh gives it to
//! Packer's `qemu` builder so that both boot the same stemcell the same way.
//!
//! ```text
//! settings_iso OUT.iso --key KEY.pub [--password-hash-file FILE] [--agent-id ID] [--epoch SECONDS]
//! ```
//! The password hash file holds a crypt hash (`openssl passwd -6`); it goes
//! into `env.bosh.password` (root's and vcap's password on the stemcell).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use opsbake_core::Secret;
use opsbake_stemcell::{write_agent_settings_iso, AgentSettings};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut keys: Vec<String> = Vec::new();
    let mut hash: Option<Secret<String>> = None;
    let mut agent_id = "opsbake-build".to_string();
    let mut epoch: i64 = 1_704_067_200;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--key" => {
                let p = args.next().expect("--key FILE");
                keys.push(
                    std::fs::read_to_string(&p)
                        .unwrap_or_else(|e| panic!("{p}: {e}"))
                        .trim()
                        .to_string(),
                );
            }
            "--password-hash-file" => {
                let p = args.next().expect("--password-hash-file FILE");
                let h = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
                hash = Some(Secret::new(h.trim().to_string()));
            }
            "--agent-id" => agent_id = args.next().expect("--agent-id ID"),
            "--epoch" => {
                epoch = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--epoch SECONDS")
            }
            o => out = Some(PathBuf::from(o)),
        }
    }
    let out = out.expect("settings_iso OUT.iso --key KEY.pub");
    assert!(!keys.is_empty(), "give at least one --key");
    let settings = AgentSettings::minimal(&agent_id, keys, hash);
    write_agent_settings_iso(&settings, epoch, &out).unwrap();
    eprintln!("{}: agent settings ISO ({agent_id})", out.display());
}
