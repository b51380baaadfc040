//! `opsbake inspect TEMPLATE --matrix`: the build matrix as JSON, one entry
//! per IaaS with what a CI worker needs to run that one build (credentials
//! env vars, the services it talks to and their test peers, tools, the
//! command, the expected duration from the last build in the manifest).
//! The shape fits a GitHub Actions `strategy.matrix` (`iaas` is the axis,
//! `include` adds each entry's facts) and a Concourse `across` step
//! (`values: ((.:matrix.include))`).

use std::path::Path;

use opsbake_core::plan::BuildPlan;
use opsbake_core::template::Iaas;
use serde_json::{json, Value};

/// What an IaaS's build needs, independent of the template.
struct Needs {
    /// Env vars holding credentials (any one of the alternatives).
    credentials_env: &'static [&'static str],
    /// How the credentials are found, in one sentence.
    credentials: &'static str,
    /// The APIs it talks to.
    services: &'static [&'static str],
    /// The test peers standing in for them (scripts/setup.sh installs them).
    test_peers: &'static [&'static str],
    /// The variable file of images/appliance.yml for those peers.
    test_var_file: Option<&'static str>,
    /// Commands needed on the worker.
    tools: &'static [&'static str],
}

fn needs(iaas: Iaas) -> Needs {
    match iaas {
        Iaas::Aws => Needs {
            credentials_env: &[
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_PROFILE",
            ],
            credentials: "the AWS SDK chain: access key (+ session token) from the environment, a profile, web identity (OIDC) or the instance role",
            services: &["EC2", "EBS direct APIs"],
            test_peers: &["moto_server"],
            test_var_file: Some("images/moto.vars.yml"),
            tools: &[],
        },
        Iaas::Gcp => Needs {
            credentials_env: &[
                "GOOGLE_APPLICATION_CREDENTIALS",
                "GOOGLE_PROJECT_ID",
                "GOOGLE_CLOUD_PROJECT",
            ],
            credentials: "a service account key file (options.credentials_file or GOOGLE_APPLICATION_CREDENTIALS), else Application Default Credentials; the project from the template or GOOGLE_PROJECT_ID",
            services: &["Compute Engine", "Cloud Storage"],
            test_peers: &["GCE test server (test-support)", "fake-gcs-server"],
            test_var_file: Some("images/gce.vars.yml"),
            tools: &[],
        },
        Iaas::Azure => Needs {
            credentials_env: &[
                "AZURE_TENANT_ID",
                "AZURE_CLIENT_ID",
                "AZURE_CLIENT_SECRET",
                "AZURE_FEDERATED_TOKEN_FILE",
                "AZURE_SUBSCRIPTION_ID",
                "AZURE_STORAGE_KEY",
            ],
            credentials: "a service principal (client secret or federated token), else the Azure CLI's login; the storage account key or a SAS for the VHD upload",
            services: &["Azure Resource Manager", "Blob storage"],
            test_peers: &["ARM test server (test-support)", "azurite"],
            test_var_file: Some("images/azure.vars.yml"),
            tools: &[],
        },
        Iaas::Vsphere => Needs {
            credentials_env: &["GOVC_URL", "GOVC_USERNAME", "GOVC_PASSWORD"],
            credentials: "vCenter's URL, user and password (govc's variables); the certificate pinned by options.thumbprint",
            services: &["vCenter (vSphere API, NFC)"],
            test_peers: &["vcsim"],
            test_var_file: Some("images/vsphere.vars.yml"),
            tools: &[],
        },
        Iaas::Vbox => Needs {
            credentials_env: &[],
            credentials: "none: the build runs on the worker",
            services: &[],
            test_peers: &["QEMU (the qemu engine; VirtualBox where installed)"],
            test_var_file: None,
            tools: &["qemu-system-x86_64", "qemu-img"],
        },
        Iaas::Ssh => Needs {
            credentials_env: &[],
            credentials: "the SSH settings of the template",
            services: &["an SSH host"],
            test_peers: &["sshd"],
            test_var_file: None,
            tools: &[],
        },
        Iaas::Localtest => Needs {
            credentials_env: &[],
            credentials: "none",
            services: &[],
            test_peers: &[],
            test_var_file: None,
            tools: &[],
        },
    }
}

/// The expected duration of an IaaS's build: the last one recorded in the
/// template's manifest, if any.
fn expected_seconds(manifest: &Path, iaas: Iaas) -> Option<f64> {
    let m = opsbake_core::manifest::read(manifest).ok()?;
    let ty = format!("opsbake-{iaas}");
    m.builds
        .iter()
        .rev()
        .find(|b| b.builder_type == ty && b.build_seconds.is_some())
        .and_then(|b| b.build_seconds)
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,@+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// One matrix entry per IaaS; `template` and `var_files` as the user gave
/// them (they go into each entry's command). The plan is None where it
/// cannot be made on this machine (a stemcell that only the worker
/// downloads): its stemcell, manifest and expected duration are null.
pub fn matrix(
    template: &Path,
    var_files: &[std::path::PathBuf],
    plans: &[(Iaas, Option<BuildPlan>)],
) -> Value {
    let mut include = Vec::new();
    let mut axis = Vec::new();
    for (iaas, plan) in plans {
        let iaas = *iaas;
        let n = needs(iaas);
        let mut cmd = format!(
            "opsbake build {} --iaas {}",
            shell_word(&template.display().to_string()),
            iaas
        );
        for f in var_files {
            cmd.push_str(&format!(
                " --var-file {}",
                shell_word(&f.display().to_string())
            ));
        }
        axis.push(iaas.to_string());
        include.push(json!({
            "iaas": iaas.to_string(),
            // Every IaaS has a builder (dispatch's table is exhaustive); CI
            // readers and tests/ci_examples.rs read the field.
            "implemented": true,
            "credentials_env": n.credentials_env,
            "credentials": n.credentials,
            "services": n.services,
            "test_peers": n.test_peers,
            "test_var_file": n.test_var_file,
            "tools": n.tools,
            "stemcell": plan
                .as_ref()
                .and_then(|p| p.stemcell.as_ref())
                .and_then(|s| s.path.clone().or(s.url.clone())),
            "command": cmd,
            "manifest": plan.as_ref().map(|p| p.manifest_path.display().to_string()),
            "expected_seconds": plan
                .as_ref()
                .and_then(|p| expected_seconds(&p.manifest_path, iaas)),
        }));
    }
    // Only arrays at the top: GitHub Actions makes every key an axis.
    json!({
        "iaas": axis,
        "include": include,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_cloud_names_its_credentials_and_peers() {
        for i in [Iaas::Aws, Iaas::Gcp, Iaas::Azure, Iaas::Vsphere] {
            let n = needs(i);
            assert!(!n.credentials_env.is_empty(), "{i}");
            assert!(!n.test_peers.is_empty(), "{i}");
            assert!(n.test_var_file.is_some(), "{i}");
        }
        assert!(needs(Iaas::Vbox).credentials_env.is_empty());
        assert!(needs(Iaas::Vbox).tools.contains(&"qemu-img"));
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("images/appliance.yml"), "images/appliance.yml");
        assert_eq!(shell_word("my dir/a.yml"), "'my dir/a.yml'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
