use super::*;
use std::path::Path;

fn parse_str(s: &str) -> Result<Loaded, TemplateError> {
    parse(Path::new("images/t.yml"), s.to_string())
}

#[test]
fn a_full_template_parses() {
    let t = parse_str(
        r#"
name: appliance
variables:
  region: {default: us-east-1}
stemcells:
  aws: {path: stemcells/x.tgz, sha1: abc}
builds:
  aws:
    cpus: 2
    memory: "${var.mem}"
    ssh: {user: vcap, host_key: {pin: ["ssh-ed25519 AAAA"]}}
    options: {region: "${var.region}", copy_regions: [eu-west-1]}
provision:
  - type: file
    source: provisioning/files/
    destination: /var/tmp/x
  - type: shell
    scripts: [a.sh, b.sh]
    only: [aws]
    timeout: 5m
outputs: {checksums: [sha256]}
"#,
    )
    .unwrap();
    let b = t.template.builds.aws.unwrap();
    assert_eq!(b.cpus, Some(Tv::Lit(2)));
    assert_eq!(b.memory, Some(Tv::Expr("${var.mem}".into())));
    assert_eq!(
        b.ssh.host_key,
        HostKeySpec::Pin(vec!["ssh-ed25519 AAAA".into()])
    );
    assert_eq!(t.template.provision.len(), 2);
    assert!(t.template.provision[1].applies_to(Iaas::Aws));
    assert!(!t.template.provision[1].applies_to(Iaas::Vbox));
}

#[test]
fn unknown_key_in_a_nested_build_names_line_column_and_path() {
    let err = parse_str("name: x\nbuilds:\n  vbox:\n    cpu: 2\n").unwrap_err();
    let s = err.to_string();
    assert!(s.starts_with("images/t.yml:4:5: builds.vbox"), "{s}");
    assert!(s.contains("unknown field `cpu`"), "{s}");
}

#[test]
fn unknown_key_inside_one_provisioner_points_at_the_key() {
    let src = "name: x\nbuilds: {}\nprovision:\n  - type: shell\n    inline: [\"true\"]\n  - type: shell\n    scirpts: [a.sh]\n";
    let s = parse_str(src).unwrap_err().to_string();
    assert!(s.starts_with("images/t.yml:7:5: "), "{s}");
    assert!(s.contains("provision[1]"), "{s}");
    assert!(s.contains("scirpts"), "{s}");
}

#[test]
fn unknown_provisioner_type_and_iaas_are_errors() {
    let s = parse_str("name: x\nbuilds: {}\nprovision:\n  - type: ansible\n")
        .unwrap_err()
        .to_string();
    assert!(s.contains("images/t.yml:4:"), "{s}");
    assert!(s.contains("ansible"), "{s}");
    let s = parse_str("name: x\nbuilds:\n  openstack: {}\n")
        .unwrap_err()
        .to_string();
    assert!(s.contains("images/t.yml:3:"), "{s}");
}

#[test]
fn alias_bombs_are_refused_quickly() {
    let mut src = String::from("name: x\nbuilds: {}\nvariables:\n  a: &a {description: lol}\n");
    let mut prev = "a".to_string();
    for i in 0..30 {
        let name = format!("b{i}");
        src.push_str(&format!(
                "  {name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        prev = name;
    }
    let started = std::time::Instant::now();
    let r = parse_str(&src);
    assert!(r.is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn durations_parse() {
    assert_eq!("90s".parse::<Dur>().unwrap().0.as_secs(), 90);
    assert_eq!("1h30m".parse::<Dur>().unwrap().0.as_secs(), 5400);
    assert_eq!("250ms".parse::<Dur>().unwrap().0.as_millis(), 250);
    assert_eq!("12".parse::<Dur>().unwrap().0.as_secs(), 12);
    assert!("5x".parse::<Dur>().is_err());
    assert!("m".parse::<Dur>().is_err());
}

#[test]
fn schema_is_generated() {
    let s = json_schema();
    assert!(s["definitions"]["Provisioner"].is_object(), "{s}");
}

#[test]
fn empty_and_comment_only_files_say_empty_template() {
    for src in ["", "# just a comment\n\n   # another\n", "---\n"] {
        let e = parse_str(src).unwrap_err().to_string();
        assert!(e.contains("empty template"), "{src:?}: {e}");
        assert!(!e.contains("missing field"), "{e}");
    }
}

#[test]
fn invalid_utf8_names_line_and_byte_offset() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("t.yml");
    std::fs::write(&p, b"name: x\nbuilds:\n  vbox: {cpus: \"\xff\"}\n").unwrap();
    let e = load(&p).unwrap_err().to_string();
    assert!(
        e.contains("t.yml:3:17: (file): invalid UTF-8 at byte offset 32"),
        "{e}"
    );
}
