//! docs/aws.md's minimal IAM policy names every EC2 and EBS action the
//! builder calls: the SDK calls in `src/*.rs` (`.describe_images()` ...)
//! are turned into action names (`ec2:DescribeImages`) and looked up in the
//! policy's JSON block.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

/// SDK operations by prefix: (method prefix or exact name, service).
const EBS: [&str; 3] = ["start_snapshot", "put_snapshot_block", "complete_snapshot"];
const EC2_PREFIXES: [&str; 16] = [
    "describe_",
    "create_",
    "delete_",
    "get_console_output",
    "modify_",
    "run_instances",
    "stop_instances",
    "terminate_instances",
    "import_key_pair",
    "copy_image",
    "register_image",
    "deregister_image",
    "enable_image_deprecation",
    "authorize_security_group_ingress",
    "import_snapshot",
    "cancel_import_task",
];
const S3: [&str; 8] = [
    "create_multipart_upload",
    "upload_part",
    "complete_multipart_upload",
    "abort_multipart_upload",
    "delete_object",
    "head_bucket",
    "list_objects_v2",
    "list_multipart_uploads",
];
/// Answer accessors that look like operations.
const NOT_CALLS: [&str; 1] = ["import_snapshot_tasks"];

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `.name()` calls in the source.
fn calls(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in src.match_indices("()") {
        let before = &src[..i];
        let start = before
            .rfind(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .map_or(0, |p| p + 1);
        if start == 0 || &before[start - 1..start] != "." {
            continue;
        }
        out.insert(before[start..].to_string());
    }
    out
}

#[test]
fn the_documented_policy_lists_every_action_the_code_calls() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Every .rs file under src/ (the step modules and src/resources/).
    let mut src = String::new();
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                src.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let doc = std::fs::read_to_string(root.join("../../docs/aws.md")).unwrap();
    let policy = doc
        .split("## Minimal IAM policy")
        .nth(1)
        .and_then(|s| s.split("```json").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/aws.md has a ```json policy under `## Minimal IAM policy`");
    let policy: serde_json::Value = serde_json::from_str(policy).expect("the policy is JSON");
    let allowed: BTreeSet<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut wanted = BTreeSet::new();
    for c in calls(&src) {
        if NOT_CALLS.contains(&c.as_str()) {
            continue;
        }
        let service = if EBS.contains(&c.as_str()) {
            "ebs"
        } else if S3.contains(&c.as_str()) {
            "s3"
        } else if EC2_PREFIXES.iter().any(|p| c.starts_with(p)) {
            "ec2"
        } else {
            continue;
        };
        let action = match (service, c.as_str()) {
            // IAM names for S3 multipart calls.
            ("s3", "create_multipart_upload" | "upload_part" | "complete_multipart_upload") => {
                "s3:PutObject".to_string()
            }
            ("s3", "abort_multipart_upload") => "s3:AbortMultipartUpload".to_string(),
            ("s3", "head_bucket" | "list_objects_v2") => "s3:ListBucket".to_string(),
            ("s3", "list_multipart_uploads") => "s3:ListBucketMultipartUploads".to_string(),
            _ => format!("{service}:{}", pascal(&c)),
        };
        wanted.insert(action);
    }
    assert!(wanted.contains("ec2:RunInstances"), "scan found {wanted:?}");
    assert!(
        wanted.contains("ebs:PutSnapshotBlock"),
        "scan found {wanted:?}"
    );
    let missing: Vec<&String> = wanted.difference(&allowed).collect();
    assert!(
        missing.is_empty(),
        "docs/aws.md's policy lacks {missing:?} (the code calls them)"
    );
}
