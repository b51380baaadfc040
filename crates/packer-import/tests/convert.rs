//! Every fixture (one per builder type, one with every provisioner type, a
//! multi-builder one with only/except, an HCL2 one) is converted into a
//! directory other than the fixtures' (so relative paths must be rebased),
//! loaded and planned through opsbake-core exactly as `opsbake validate`
//! does, and every Packer key is accounted for: mapped or reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use opsbake_core::plan::{validate_all, BuildPlan};
use opsbake_core::template::{self, Iaas};
use opsbake_core::vars::{resolve, VarSources};
use opsbake_packer_import::{convert_file, Conversion, ImportError};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Converted {
    conv: Conversion,
    plans: Vec<BuildPlan>,
    yaml: String,
    _dir: tempfile::TempDir,
}

impl Converted {
    fn plan(&self, i: Iaas) -> &BuildPlan {
        self.plans
            .iter()
            .find(|p| p.iaas == i)
            .expect("a plan for the IaaS")
    }
    fn note(&self, key: &str) -> String {
        self.conv
            .notes
            .iter()
            .filter(|n| n.key == key)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Convert a fixture into a new directory, then validate the result with
/// `vars` (stemcell variables get a dummy stemcell).
fn convert(name: &str, vars: &[(&str, &str)]) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("opsbake");
    std::fs::create_dir_all(&out).unwrap();
    let conv = convert_file(&fixtures().join(name), &out).unwrap();
    let path = out.join("converted.yml");
    std::fs::write(&path, &conv.yaml).unwrap();
    let sc = dir.path().join("stemcell.tgz");
    std::fs::write(&sc, "x").unwrap();
    let loaded = template::load(&path).unwrap_or_else(|e| {
        panic!(
            "{name}: the converted template does not load: {e}\n{}",
            conv.yaml
        )
    });
    let mut s = VarSources::default();
    for k in loaded.template.variables.keys() {
        if k.starts_with("stemcell_") {
            s.cli.push((k.clone(), sc.display().to_string()));
        }
    }
    for (k, v) in vars {
        s.cli.push((k.to_string(), v.to_string()));
    }
    let v = resolve(&loaded, &s)
        .unwrap_or_else(|e| panic!("{name}: variables do not resolve: {e}\n{}", conv.yaml));
    let plans = validate_all(&loaded, &v).unwrap_or_else(|e| {
        panic!(
            "{name}: the converted template does not validate: {e}\n{}",
            conv.yaml
        )
    });
    Converted {
        yaml: conv.yaml.clone(),
        conv,
        plans,
        _dir: dir,
    }
}

/// Every variable, top-level key, builder option, provisioner (and its
/// keys) and post-processor key of the Packer file.
fn packer_keys(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let o = doc.as_object().unwrap();
    for (k, v) in o {
        out.push(k.clone());
        match (k.as_str(), v) {
            ("variables", Value::Object(m)) => {
                out.extend(m.keys().map(|n| format!("variables.{n}")))
            }
            ("builders" | "provisioners", Value::Array(a)) => {
                for (i, b) in a.iter().enumerate() {
                    for bk in b.as_object().unwrap().keys() {
                        out.push(format!("{k}[{i}].{bk}"));
                    }
                }
            }
            ("post-processors", Value::Array(a)) => {
                fn pp(p: String, v: &Value, out: &mut Vec<String>) {
                    match v {
                        Value::Array(a) => {
                            for (i, x) in a.iter().enumerate() {
                                pp(format!("{p}[{i}]"), x, out);
                            }
                        }
                        Value::Object(m) => out.extend(m.keys().map(|k| format!("{p}.{k}"))),
                        _ => out.push(p),
                    }
                }
                for (i, x) in a.iter().enumerate() {
                    pp(format!("post-processors[{i}]"), x, &mut out);
                }
            }
            _ => {}
        }
    }
    out
}

fn assert_accounted(name: &str, c: &Converted) {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap();
    let mut missing = Vec::new();
    for k in packer_keys(&doc) {
        let mapped = c.conv.mapped.contains(&k);
        let noted = c.conv.notes.iter().any(|n| n.key == k);
        if !mapped && !noted {
            missing.push(k);
        }
    }
    assert!(
        missing.is_empty(),
        "{name}: not accounted for: {missing:?}\n{}",
        c.yaml
    );
    // Every report line is a comment in the template too (except the
    // notes about mapped values, which carry no comment).
    for n in &c.conv.notes {
        if n.action.contains("not converted") && !n.key.starts_with("variables") {
            assert!(
                c.yaml.contains(&format!("packer {}: ", n.key)),
                "{name}: no comment for {n}\n{}",
                c.yaml
            );
        }
    }
}

#[test]
fn amazon_ebs() {
    let c = convert("amazon-ebs.json", &[("kms_key", "alias/app")]);
    assert_accounted("amazon-ebs.json", &c);
    let p = c.plan(Iaas::Aws);
    let b = p.template.builds.aws.as_ref().unwrap();
    let o = &b.options;
    assert_eq!(o.region.as_deref(), Some("eu-central-1"));
    assert_eq!(o.instance_type.as_deref(), Some("m5.large"));
    assert_eq!(o.ami_name.as_deref(), Some("appliance-1.0.0-validate"));
    assert_eq!(
        o.ami_description.as_deref(),
        Some("Appliance 1.0.0 built by aws")
    );
    assert_eq!(o.copy_regions, vec!["eu-west-1", "us-east-1"]);
    assert_eq!(o.ami_users, vec!["123456789012"]);
    assert_eq!(o.ami_groups, vec!["all"]);
    assert!(o.force_deregister && o.encrypt && o.spot);
    assert_eq!(
        o.kms_key_ids.get("eu-central-1").map(String::as_str),
        Some("alias/app")
    );
    assert_eq!(o.tags.get("Version").map(String::as_str), Some("1.0.0"));
    assert_eq!(o.security_group_id.as_deref(), Some("sg-1"));
    assert_eq!(p.network.network.as_deref(), Some("vpc-1"));
    assert_eq!(p.network.subnet.as_deref(), Some("subnet-1"));
    assert_eq!(p.network.public_ip, Some(true));
    assert_eq!(p.network.ssh_cidrs, vec!["203.0.113.0/24"]);
    assert_eq!(p.disk_mib, Some(20 * 1024));
    assert_eq!(p.ssh.user, "vcap");
    assert_eq!(p.ssh.interface.as_deref(), Some("private"));
    assert_eq!(p.ssh.login_timeout.as_secs(), 600);
    assert!(p
        .ssh
        .private_key_file
        .as_ref()
        .unwrap()
        .ends_with("keys/ops.pem"));
    // Relative paths point back at the fixtures from the new directory.
    assert!(c.yaml.contains("\"../../"), "{}", c.yaml);
    // The source AMI is replaced by the stemcell, reported with its place.
    let n = c.note("builders[0].source_ami");
    assert!(
        n.contains("amazon-ebs.json:19:5:") && n.contains("stemcell"),
        "{n}"
    );
    assert!(c
        .yaml
        .contains("# packer builders[0].source_ami: replaced by the stemcell"));
    assert!(c
        .note("builders[0].user_data_file")
        .contains("no longer needed"));
    assert!(c.note("builders[0].secret_key").contains("credentials"));
    assert!(c.note("builders[0].ami_name").contains("${build.id}"));
    assert!(c.note("min_packer_version").contains("not converted"));
    // Secrets are never shown in comments; sensitive stays sensitive.
    assert!(c.yaml.contains("packer builders[0].secret_key: not converted: credentials are never part of an opsbake template (value not shown)"), "{}", c.yaml);
    let t = template::parse(Path::new("t.yml"), c.yaml.clone())
        .unwrap()
        .template;
    assert!(t.variables["aws_secret_key"].sensitive);
    assert_eq!(
        t.variables["aws_secret_key"].default.as_deref(),
        Some("${env.AWS_SECRET_ACCESS_KEY}")
    );
    assert!(t.variables["kms_key"].default.is_none());
    assert_eq!(t.description.as_deref(), Some("Appliance AMI"));
    assert!(c.yaml.contains("# _comment: An appliance on AWS"));
}

#[test]
fn googlecompute() {
    let c = convert("googlecompute.json", &[]);
    assert_accounted("googlecompute.json", &c);
    let p = c.plan(Iaas::Gcp);
    let o = &p.template.builds.gcp.as_ref().unwrap().options;
    assert_eq!(o.project_id.as_deref(), Some("my-project"));
    assert_eq!(o.zone.as_deref(), Some("europe-west1-b"));
    assert_eq!(o.machine_type.as_deref(), Some("n2-standard-2"));
    assert_eq!(o.image_name.as_deref(), Some("appliance-validate"));
    assert_eq!(o.image_family.as_deref(), Some("appliance"));
    assert_eq!(p.disk_mib, Some(30 * 1024));
    assert_eq!(p.network.public_ip, Some(false));
    assert_eq!(p.network.subnet.as_deref(), Some("build"));
    assert_eq!(p.ssh.interface.as_deref(), Some("private"));
    assert!(c.note("builders[0].account_file").contains("credentials"));
    assert!(c
        .note("builders[0].source_image_family")
        .contains("stemcell"));
    assert_eq!(p.provision.len(), 1);
}

#[test]
fn azure_arm() {
    let c = convert("azure-arm.json", &[]);
    assert_accounted("azure-arm.json", &c);
    let p = c.plan(Iaas::Azure);
    let o = &p.template.builds.azure.as_ref().unwrap().options;
    assert_eq!(
        o.subscription_id.as_deref(),
        Some("00000000-0000-0000-0000-000000000000")
    );
    assert_eq!(o.resource_group.as_deref(), Some("images"));
    assert_eq!(o.location.as_deref(), Some("westeurope"));
    assert_eq!(o.vm_size.as_deref(), Some("Standard_D2s_v3"));
    assert_eq!(o.image_name.as_deref(), Some("appliance-validate"));
    assert_eq!(p.disk_mib, Some(40 * 1024));
    assert_eq!(p.network.network.as_deref(), Some("vnet"));
    for k in ["client_id", "client_secret", "tenant_id"] {
        assert!(
            c.note(&format!("builders[0].{k}")).contains("credentials"),
            "{k}"
        );
    }
    // A custom data file that does not hand in a key is pointed out.
    assert!(c
        .note("builders[0].custom_data_file")
        .contains("what else this user data does"));
    assert!(c.note("builders[0].image_sku").contains("stemcell"));
}

#[test]
fn vsphere_iso() {
    let c = convert("vsphere-iso.json", &[]);
    assert_accounted("vsphere-iso.json", &c);
    let p = c.plan(Iaas::Vsphere);
    let o = &p.template.builds.vsphere.as_ref().unwrap().options;
    assert_eq!(o.url.as_deref(), Some("https://vcenter.example.com/sdk"));
    assert_eq!(o.username.as_deref(), Some("administrator@vsphere.local"));
    assert!(o.password.is_some() && o.insecure);
    assert_eq!(o.datacenter.as_deref(), Some("dc1"));
    assert_eq!(o.cluster.as_deref(), Some("cluster1"));
    assert_eq!(o.datastore.as_deref(), Some("ds1"));
    assert_eq!(o.resource_pool.as_deref(), Some("pool1"));
    assert_eq!(o.folder.as_deref(), Some("images"));
    assert_eq!(o.network.as_deref(), Some("VM Network"));
    assert_eq!((p.cpus, p.memory_mib, p.disk_mib), (2, 4096, Some(20480)));
    assert!(p.ssh.password.is_some());
    assert!(c
        .note("builders[0].storage[0].disk_thin_provisioned")
        .contains("not converted"));
    assert!(c
        .note("builders[0].network_adapters[0].network_card")
        .contains("not converted"));
    assert!(c
        .note("builders[0].boot_command")
        .contains("stemcell boots"));
    assert!(c.note("builders[0].host").contains("no equivalent"));
    // The sensitive password variable stays sensitive.
    let t = template::parse(Path::new("t.yml"), c.yaml.clone())
        .unwrap()
        .template;
    assert!(t.variables["vsphere_password"].sensitive && t.variables["ssh_password"].sensitive);
}

#[test]
fn vsphere_clone() {
    let c = convert("vsphere-clone.json", &[]);
    assert_accounted("vsphere-clone.json", &c);
    let p = c.plan(Iaas::Vsphere);
    let o = &p.template.builds.vsphere.as_ref().unwrap().options;
    assert_eq!(o.url.as_deref(), Some("https://vc.example.com/sdk"));
    assert_eq!((p.cpus, p.memory_mib, p.disk_mib), (2, 2048, Some(10240)));
    assert_eq!(o.network.as_deref(), Some("VM Network"));
    assert!(c.note("builders[0].template").contains("stemcell"));
    assert!(c.note("builders[0].linked_clone").contains("not converted"));
}

#[test]
fn virtualbox_ovf() {
    let c = convert("virtualbox-ovf.json", &[]);
    assert_accounted("virtualbox-ovf.json", &c);
    let p = c.plan(Iaas::Vbox);
    let o = &p.template.builds.vbox.as_ref().unwrap().options;
    assert_eq!(o.vm_name.as_deref(), Some("appliance"));
    assert!(o.shutdown_timeout.is_some());
    assert_eq!(p.template.outputs.formats, vec!["ova"]);
    assert!(p.output_dir.ends_with("output-vbox"));
    assert_eq!((p.cpus, p.memory_mib), (2, 2048));
    assert_eq!(p.ssh.port, Some(22));
    assert!(c
        .note("builders[0].shutdown_command")
        .contains("shuts the VM down itself"));
    assert!(c
        .note("builders[0].vboxmanage")
        .contains("runs the VM itself"));
    assert!(c.note("builders[0].source_path").contains("stemcell"));
}

#[test]
fn virtualbox_iso() {
    let c = convert("virtualbox-iso.json", &[]);
    assert_accounted("virtualbox-iso.json", &c);
    let p = c.plan(Iaas::Vbox);
    assert_eq!((p.cpus, p.memory_mib, p.disk_mib), (4, 4096, Some(40960)));
    assert!(c.note("builders[0].iso_url").contains("stemcell"));
    assert!(c
        .note("builders[0].http_directory")
        .contains("stemcell boots"));
}

#[test]
fn qemu() {
    let c = convert("qemu.json", &[]);
    assert_accounted("qemu.json", &c);
    let p = c.plan(Iaas::Vbox);
    let o = &p.template.builds.vbox.as_ref().unwrap().options;
    assert_eq!(o.engine.as_deref(), Some("qemu"));
    assert_eq!(o.accel.as_deref(), Some("kvm"));
    assert_eq!(p.disk_mib, Some(20 * 1024));
    assert_eq!(p.ssh.login_timeout.as_secs(), 1200);
    assert!(c.note("builders[0].format").contains("OVA"));
    assert!(c
        .note("builders[0].qemuargs")
        .contains("runs the VM itself"));
}

#[test]
fn null_builder_becomes_ssh() {
    let c = convert("null.json", &[]);
    assert_accounted("null.json", &c);
    let p = c.plan(Iaas::Ssh);
    assert_eq!(p.ssh.host.as_deref(), Some("192.0.2.10"));
    assert_eq!(p.ssh.port, Some(22));
    let b = p.ssh.bastion.as_ref().unwrap();
    assert_eq!(
        (b.host.as_str(), b.user.as_str(), b.port),
        ("jump.example.com", "ops", 22)
    );
    assert!(c.note("builders[0].ssh_pty").contains("SSH transport"));
    // No stemcell for the ssh builder.
    assert!(!c.yaml.contains("stemcells:"));
}

#[test]
fn every_provisioner_type() {
    let c = convert("provisioners.json", &[]);
    assert_accounted("provisioners.json", &c);
    let p = c.plan(Iaas::Ssh);
    use opsbake_core::template::Provisioner as P;
    let steps = &p.provision;
    let types: Vec<&str> = steps.iter().map(|s| s.type_name()).collect();
    assert_eq!(
        types,
        vec![
            "file",
            "file",
            "file",
            "file",
            "file",
            "file",
            "shell",
            "shell",
            "shell",
            "shell",
            "shell",
            "shell",
            "shell",
            "shell-local",
            "shell-local",
            "shell-local",
            "chef-solo",
            "chef-solo",
            "breakpoint"
        ],
        "{}",
        c.yaml
    );
    let P::File(f0) = &steps[0] else { panic!() };
    // Packer puts a directory named without `/` inside the destination.
    assert_eq!(f0.destination, "/var/tmp/tree/tree");
    assert!(c
        .note("provisioners[0].destination")
        .contains("/var/tmp/tree/tree"));
    let P::File(f1) = &steps[1] else { panic!() };
    assert_eq!(f1.destination, "/var/tmp/contents");
    let P::File(f4) = &steps[4] else { panic!() };
    assert_eq!(f4.content.as_deref(), Some("motd from appliance"));
    let P::File(f5) = &steps[5] else { panic!() };
    assert_eq!(f5.direction.as_deref(), Some("download"));
    assert!(c
        .note("provisioners[6].generated")
        .contains("the step was not converted"));
    let P::Shell(s7) = &steps[6] else { panic!() };
    assert_eq!(s7.inline, vec!["echo appliance", "echo $HOME ${HOME}"]);
    assert_eq!(s7.sudo, Some(false));
    assert_eq!(
        s7.common.max_retries,
        Some(opsbake_core::template::Tv::Lit(2))
    );
    let P::Shell(s8) = &steps[7] else { panic!() };
    assert_eq!(s8.environment_vars["GREETING"], "it's \"quoted\"");
    let P::Shell(s9) = &steps[8] else { panic!() };
    assert_eq!(
        s9.execute_command.as_deref(),
        Some("echo 'c1oudc0w' | sudo -S sh -c '{{.Vars}} {{.Path}}'")
    );
    assert!(c
        .note("provisioners[9].execute_command")
        .contains("passwordless sudo"));
    let P::Shell(s10) = &steps[9] else { panic!() };
    assert!(s10.expect_disconnect);
    assert_eq!(s10.valid_exit_codes, vec![0, 2300218]);
    assert!(s10.start_retry_timeout.is_some() && s10.common.pause_before.is_some());
    let P::Shell(s11) = &steps[10] else { panic!() };
    assert_eq!(s11.environment_vars["PACKER_BUILD_NAME"], "ssh");
    assert!(c
        .note("provisioners[11].remote_folder")
        .contains("/var/tmp/opsbake"));
    let P::Shell(s12) = &steps[11] else { panic!() };
    assert_eq!(s12.common.only, vec![Iaas::Ssh]);
    assert!(c
        .note("provisioners[12].inline_shebang")
        .contains("#!/bin/sh -e"));
    assert!(c.note("provisioners[13]").contains("type: handoff"));
    let P::ShellLocal(l16) = &steps[15] else {
        panic!()
    };
    assert_eq!(l16.inline, vec!["echo legacy"]);
    assert!(c
        .note("provisioners[15].execute_command")
        .contains("not converted"));
    let P::ChefSolo(ch) = &steps[16] else {
        panic!()
    };
    assert_eq!(ch.environment.as_deref(), Some("production"));
    assert_eq!(ch.install.as_deref(), Some("skip"));
    assert_eq!(ch.json.as_ref().unwrap()["app"]["ratio"], 0.5);
    let P::ChefSolo(ch2) = &steps[17] else {
        panic!()
    };
    assert_eq!(ch2.install.as_deref(), Some("omnitruck"));
    assert!(c.note("provisioners[18].version").contains("not converted"));
    assert!(c
        .note("provisioners[20].disable")
        .contains("disabled breakpoint"));
    assert!(c
        .note("provisioners[21]")
        .contains("`ansible` has no opsbake equivalent"));
    // Post-processors.
    assert!(p.manifest_path.ends_with("manifest.json"));
    assert_eq!(
        p.template.outputs.checksums,
        vec![opsbake_core::template::ChecksumType::Sha256]
    );
    assert!(c
        .note("post-processors[1][0].checksum_types")
        .contains("md5"));
    assert!(c.note("post-processors[1][1]").contains("`compress`"));
    assert!(c
        .note("post-processors[0].strip_path")
        .contains("not converted"));
}

#[test]
fn multi_builder_with_only_and_except() {
    let c = convert("multi-builder.json", &[]);
    assert_accounted("multi-builder.json", &c);
    let iaases: Vec<Iaas> = c.plans.iter().map(|p| p.iaas).collect();
    assert_eq!(iaases, vec![Iaas::Aws, Iaas::Gcp, Iaas::Vbox]);
    let labels = |i: Iaas| -> Vec<String> {
        c.plan(i)
            .provision
            .iter()
            .map(|s| match s {
                opsbake_core::template::Provisioner::Shell(s) => s.inline[0].clone(),
                _ => String::new(),
            })
            .collect()
    };
    assert_eq!(
        labels(Iaas::Aws),
        vec![
            "echo everywhere",
            "echo clouds",
            "echo not vbox",
            "echo aws or container",
            "echo overridden"
        ]
    );
    assert_eq!(
        labels(Iaas::Gcp),
        vec![
            "echo everywhere",
            "echo clouds",
            "echo not vbox",
            "echo overridden"
        ]
    );
    assert_eq!(
        labels(Iaas::Vbox),
        vec!["echo everywhere", "echo overridden"]
    );
    // The override became a step of its own for aws; the others run the
    // step without it.
    let exec = |i: Iaas| match c.plan(i).provision.last().unwrap() {
        opsbake_core::template::Provisioner::Shell(s) => s.execute_command.clone(),
        _ => None,
    };
    assert_eq!(exec(Iaas::Aws).as_deref(), Some("sudo {{.Path}}"));
    assert_eq!(exec(Iaas::Gcp), None);
    assert_eq!(exec(Iaas::Vbox), None);
    assert!(c.note("builders[3]").contains("a second builder for aws"));
    assert!(c
        .note("builders[4]")
        .contains("`docker` has no opsbake equivalent"));
    assert!(c.note("provisioners[3].only").contains("not converted"));
    assert!(c
        .note("provisioners[4].only[1]")
        .contains("`container` was not converted"));
    assert!(c
        .note("provisioners[5].override.aws")
        .contains("its own step with `only: [aws]`"));
    assert_eq!(
        c.conv.builds,
        vec![
            ("aws".to_string(), Iaas::Aws),
            ("gcp".to_string(), Iaas::Gcp),
            ("vbox".to_string(), Iaas::Vbox)
        ]
    );
}

#[test]
fn hcl2_sources_builds_variables() {
    let c = convert("appliance.pkr.hcl", &[]);
    let p = c.plan(Iaas::Aws);
    let o = &p.template.builds.aws.as_ref().unwrap().options;
    assert_eq!(o.region.as_deref(), Some("eu-central-1"));
    assert_eq!(o.tags.get("Version").map(String::as_str), Some("1.0.0"));
    assert_eq!(p.disk_mib, Some(25 * 1024));
    // formatdate() has no equivalent: kept as text, reported with file:line.
    assert!(
        o.ami_name
            .as_deref()
            .unwrap()
            .starts_with("appliance-1.0.0-${formatdate("),
        "{o:?}"
    );
    let n = c.note("builders[0].ami_name");
    assert!(
        n.contains("appliance.pkr.hcl:36:") && n.contains("formatdate"),
        "{n}"
    );
    let q = c.plan(Iaas::Vbox);
    assert_eq!(
        q.template
            .builds
            .vbox
            .as_ref()
            .unwrap()
            .options
            .engine
            .as_deref(),
        Some("qemu")
    );
    assert_eq!(q.disk_mib, Some(20 * 1024));
    // `only = ["amazon-ebs.appliance"]` keeps the step to aws.
    assert_eq!(p.provision.len(), 4);
    assert_eq!(q.provision.len(), 3);
    use opsbake_core::template::Provisioner as P;
    let P::Shell(s) = &p.provision[1] else {
        panic!()
    };
    assert_eq!(s.environment_vars["APPLIANCE_NAME"], "appliance-1.0.0");
    assert!(
        s.environment_vars["ROOT"].ends_with("fixtures"),
        "{:?}",
        s.environment_vars
    );
    let P::Shell(s2) = &p.provision[2] else {
        panic!()
    };
    assert_eq!(s2.inline, vec!["echo on aws aws"]);
    let t = template::parse(Path::new("t.yml"), c.yaml.clone())
        .unwrap()
        .template;
    assert!(t.variables["token"].sensitive);
    assert_eq!(
        t.variables["token"].default.as_deref(),
        Some("${env.APP_TOKEN}")
    );
    assert_eq!(
        t.variables["version"].description.as_deref(),
        Some("The appliance version")
    );
    assert!(t.variables.contains_key("local_image_name"));
    assert!(c.note("packer").contains("appliance.pkr.hcl:1:"));
    assert!(p.manifest_path.ends_with("packer-manifest.json"));
    // Every variable, source attribute and provisioner attribute of the
    // HCL file is accounted for.
    let body = hcl::parse(&std::fs::read_to_string(fixtures().join("appliance.pkr.hcl")).unwrap())
        .unwrap();
    let mut keys = Vec::new();
    let (mut src, mut prov) = (0, 0);
    for b in body.blocks() {
        match b.identifier.as_str() {
            "variable" => keys.push(format!("variables.{}", b.labels[0].as_str())),
            "source" => {
                for s in b.body.iter() {
                    let k = match s {
                        hcl::Structure::Attribute(a) => a.key.to_string(),
                        hcl::Structure::Block(b) => b.identifier.to_string(),
                    };
                    keys.push(format!("builders[{src}].{k}"));
                }
                src += 1;
            }
            "build" => {
                for pb in b
                    .body
                    .blocks()
                    .filter(|x| x.identifier.as_str() == "provisioner")
                {
                    for a in pb.body.attributes() {
                        keys.push(format!("provisioners[{prov}].{}", a.key));
                    }
                    prov += 1;
                }
            }
            _ => {}
        }
    }
    assert!(keys.len() > 20, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !c.conv.mapped.contains(k) && !c.conv.notes.iter().any(|n| &n.key == *k))
        .collect();
    assert!(
        missing.is_empty(),
        "not accounted for: {missing:?}\n{}",
        c.yaml
    );
}

fn err(name: &str, text: &str) -> ImportError {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join(name);
    std::fs::write(&f, text).unwrap();
    convert_file(&f, d.path()).unwrap_err()
}

#[test]
fn errors_name_file_path_and_place() {
    let e = err(
        "bad.json",
        "{\n  \"builders\": [\n    {\"type\": \"null\",}\n  ]\n}\n",
    );
    assert!(matches!(e, ImportError::Syntax { line: 3, .. }), "{e}");
    assert!(e.to_string().contains("bad.json:3:"), "{e}");
    let e = err(
        "t.json",
        "{\"builders\": [{\"type\": \"null\"}, {\"name\": \"x\"}]}",
    );
    assert_eq!(
        e.to_string().rsplit('/').next().unwrap(),
        "t.json:1:33: builders[1]: a builder without `type`"
    );
    let e = err("t.json", "{\"builders\": [{\"type\": \"docker\"}]}");
    assert!(
        e.to_string()
            .contains("no builder opsbake can build (types: docker)"),
        "{e}"
    );
    let e = err("bad.pkr.hcl", "source \"null\" \"x\" {\n  ssh_host = \n}\n");
    assert!(
        matches!(
            e,
            ImportError::Syntax {
                line: 2,
                column: 14,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("bad.pkr.hcl:2:14: HCL: "), "{e}");
}

#[test]
fn not_packer_is_a_clear_error() {
    for (name, text) in [
        ("package.json", "{\"name\": \"x\", \"version\": \"1\"}"),
        ("appliance.yml", "name: appliance\nbuilds:\n  aws: {}\n"),
        (
            "main.tf",
            "resource \"aws_instance\" \"x\" {\n  ami = \"a\"\n}\n",
        ),
        ("list.json", "[1, 2]"),
    ] {
        let e = err(name, text);
        assert!(matches!(e, ImportError::NotPacker { .. }), "{name}: {e}");
        assert!(e.to_string().contains("not a Packer template"), "{e}");
    }
}
