//! What a build left in moto, through the EC2 API: shared by the AWS
//! builder's tests and the end-to-end ones (tests/aws_support includes this
//! file by path), so it needs only `aws_sdk_ec2` and `opsbake_iaas_aws`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

/// The AMI the kill tests' light stemcell points at (seeded into moto).
pub const SEED_AMI: &str = "ami-0a1b2c3d4e5f60718";

/// An EC2 client of a region at moto.
pub async fn ec2(endpoint: &str, region: &str) -> aws_sdk_ec2::Client {
    opsbake_iaas_aws::clients::Clients::new(region, Some(endpoint.to_string()))
        .ec2(region)
        .await
        .unwrap()
}

/// Tags as a map.
pub fn tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

/// Everything of a build still in moto, per region: (kind, id) pairs.
pub async fn leftovers(endpoint: &str, regions: &[&str], build_id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in regions {
        let c = ec2(endpoint, r).await;
        let f = || {
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:opsbake:build-id")
                .values(build_id)
                .build()
        };
        for k in c.describe_key_pairs().send().await.unwrap().key_pairs() {
            if k.key_name().unwrap_or("").contains(build_id) {
                out.push(format!("{r} key pair {}", k.key_name().unwrap_or("")));
            }
        }
        for g in c
            .describe_security_groups()
            .send()
            .await
            .unwrap()
            .security_groups()
        {
            if g.group_name().unwrap_or("").contains(build_id) {
                out.push(format!("{r} security group {}", g.group_id().unwrap_or("")));
            }
        }
        for i in c
            .describe_instances()
            .send()
            .await
            .unwrap()
            .reservations()
            .iter()
            .flat_map(|x| x.instances())
        {
            let st = i
                .state()
                .and_then(|s| s.name())
                .map(|s| s.as_str().to_string());
            if st.as_deref() != Some("terminated") {
                out.push(format!(
                    "{r} instance {} {:?}",
                    i.instance_id().unwrap_or(""),
                    st
                ));
            }
        }
        for v in c
            .describe_volumes()
            .filters(f())
            .send()
            .await
            .unwrap()
            .volumes()
        {
            out.push(format!("{r} volume {}", v.volume_id().unwrap_or("")));
        }
        for s in c
            .describe_snapshots()
            .owner_ids("self")
            .filters(f())
            .send()
            .await
            .unwrap()
            .snapshots()
        {
            out.push(format!("{r} snapshot {}", s.snapshot_id().unwrap_or("")));
        }
        // Every image this account owns (an image copied by a killed build
        // is not tagged yet), except the seeded base AMI and kept base images.
        for i in c
            .describe_images()
            .owners("self")
            .send()
            .await
            .unwrap()
            .images()
        {
            let base =
                tag_map(i.tags()).get("opsbake:role").map(String::as_str) == Some("base-image");
            // Seeded through MOTO_AMIS_PATH (test-support's description).
            let seeded = i.description() == Some("opsbake test base image");
            if i.image_id() == Some(SEED_AMI) || base || seeded {
                continue;
            }
            out.push(format!("{r} image {}", i.image_id().unwrap_or("")));
        }
    }
    out
}
