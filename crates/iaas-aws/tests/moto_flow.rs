//! The AWS builder's API flow against moto_server: light and heavy base
//! images, launch, capture into two regions with tags and permissions, and
//! unwinding the journal. No SSH here: the runner's connect step is tested
//! with the CLI; these tests call the builder's steps directly.

mod common;

use std::sync::Arc;

use aws_sdk_ec2::types::{ImageAttributeName, InstanceAttributeName, SnapshotAttributeName};
use base64::Engine as _;
use common::*;
use opsbake_core::builder::{Access, Builder, ConnectTarget, Deleter, HostKeyPolicy};
use opsbake_core::events::Emitter;
use opsbake_core::runner::{unwind, CleanupTracker};
use opsbake_iaas_aws::AwsBuilder;

const OPTS_TWO_REGIONS: &str = ", copy_regions: [eu-west-1], ami_users: ['111122223333'], ami_groups: [all], snapshot_users: ['111122223333'], tags: {team: ops, release: '1.2'}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_stemcell_build_lands_in_two_regions_with_tags_and_permissions() {
    let Some(moto) = moto() else { return };
    let ep = moto.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(
        dir.path(),
        &[("us-east-1", SEED_AMI), ("eu-west-1", SEED_AMI)],
    );
    let id = "ob-test-light-1";
    let plan = plan(dir.path(), &sc, &ep, OPTS_TWO_REGIONS, id);
    let b = AwsBuilder::new(&plan).unwrap();
    let (ctx, sink) = context(plan, &dir.path().join("state"), b.cleanup_config());
    b.validate(&ctx).await.unwrap();
    let base = b.base_image(&ctx).await.unwrap();
    assert_eq!(base.id, SEED_AMI);
    let key = Arc::new(key(dir.path()));
    let target = b
        .launch(
            &ctx,
            &base,
            &Access {
                key: Some(key.clone()),
            },
        )
        .await
        .unwrap();
    let ConnectTarget::Ssh(t) = target else {
        panic!("not ssh")
    };
    // The override, never moto's invented addresses.
    assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 2222));
    assert_eq!(t.host_key, HostKeyPolicy::TrustOnFirstUse);

    let c = ec2(&ep, "us-east-1").await;
    let inst = c.describe_instances().send().await.unwrap();
    let inst: Vec<_> = inst
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    assert_eq!(inst.len(), 1);
    let i = inst[0];
    let iid = i.instance_id().unwrap().to_string();
    assert_eq!(i.key_name(), Some(format!("opsbake-{id}").as_str()));
    assert_eq!(
        i.metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str()),
        Some("required"),
        "IMDSv2 required"
    );
    let tags = tag_map(i.tags());
    assert_eq!(tags.get("opsbake:build-id").map(String::as_str), Some(id));
    // User data: the BOSH settings carrying the key.
    let ud = c
        .describe_instance_attribute()
        .instance_id(&iid)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let ud = ud.user_data().and_then(|u| u.value()).unwrap();
    let settings: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(ud)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        settings["env"]["bosh"]["authorized_keys"][0],
        key.public_openssh.as_str()
    );
    assert_eq!(settings["agent_id"], format!("opsbake-{id}"));
    // Security group: SSH from the template's CIDR only.
    let sg = c
        .describe_security_groups()
        .group_names(format!("opsbake-{id}"))
        .send()
        .await
        .unwrap();
    let perms = sg.security_groups()[0].ip_permissions();
    assert_eq!(perms.len(), 1);
    assert_eq!(perms[0].from_port(), Some(22));
    let cidrs: Vec<_> = perms[0]
        .ip_ranges()
        .iter()
        .filter_map(|r| r.cidr_ip())
        .collect();
    assert_eq!(cidrs, vec!["203.0.113.0/24"]);

    let art = b.capture(&ctx).await.unwrap();
    let parts: Vec<&str> = art.id.split(',').collect();
    assert_eq!(parts.len(), 2, "{}", art.id);
    assert!(
        parts[0].starts_with("us-east-1:ami-") && parts[1].starts_with("eu-west-1:ami-"),
        "{}",
        art.id
    );
    for p in &parts {
        let (region, ami) = p.split_once(':').unwrap();
        let c = ec2(&ep, region).await;
        let img = c.describe_images().image_ids(ami).send().await.unwrap();
        let img = &img.images()[0];
        assert_eq!(img.name(), Some(format!("appliance-{id}").as_str()));
        let tags = tag_map(img.tags());
        assert_eq!(
            tags.get("team").map(String::as_str),
            Some("ops"),
            "{region}: {tags:?}"
        );
        assert_eq!(tags.get("opsbake:build-id").map(String::as_str), Some(id));
        let lp = c
            .describe_image_attribute()
            .image_id(ami)
            .attribute(ImageAttributeName::LaunchPermission)
            .send()
            .await
            .unwrap();
        let users: Vec<_> = lp
            .launch_permissions()
            .iter()
            .filter_map(|l| l.user_id())
            .collect();
        let groups: Vec<_> = lp
            .launch_permissions()
            .iter()
            .filter_map(|l| l.group().map(|g| g.as_str().to_string()))
            .collect();
        assert_eq!(users, vec!["111122223333"], "{region}");
        assert_eq!(groups, vec!["all"], "{region}");
        let snaps: Vec<String> = img
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect();
        assert!(!snaps.is_empty(), "{region}: image without snapshots");
        for s in snaps {
            let d = c
                .describe_snapshots()
                .snapshot_ids(&s)
                .send()
                .await
                .unwrap();
            let st = tag_map(d.snapshots()[0].tags());
            assert_eq!(
                st.get("release").map(String::as_str),
                Some("1.2"),
                "{region} {s}"
            );
            assert_eq!(st.get("opsbake:build-id").map(String::as_str), Some(id));
            let a = c
                .describe_snapshot_attribute()
                .snapshot_id(&s)
                .attribute(SnapshotAttributeName::CreateVolumePermission)
                .send()
                .await
                .unwrap();
            let u: Vec<_> = a
                .create_volume_permissions()
                .iter()
                .filter_map(|p| p.user_id())
                .collect();
            assert_eq!(u, vec!["111122223333"], "{region} {s}");
        }
    }
    // A successful build unwinds its temporary resources and keeps the AMIs.
    let st = ctx.journal.state();
    assert_eq!(
        st.kept.iter().filter(|r| r.kind == "aws_image").count(),
        2,
        "{:?}",
        st.kept
    );
    let left = unwind(&ctx.journal, &b, &ctx.events, &CleanupTracker::default()).await;
    assert!(left.is_empty(), "{left:?}");
    let rest = leftovers(&ep, &["us-east-1", "eu-west-1"], id).await;
    assert!(
        rest.iter()
            .all(|r| r.contains(" image ") || r.contains(" snapshot ")),
        "{rest:?}"
    );
    assert_eq!(
        rest.iter().filter(|r| r.contains(" image ")).count(),
        2,
        "{rest:?}"
    );
    // Events were emitted for every journaled resource.
    let created = sink
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                opsbake_core::events::EventKind::ResourceCreated { .. }
            )
        })
        .count();
    assert!(created >= 5, "{created}");
    let _ = Emitter::global(sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_missing_from_the_light_stemcell_is_named_before_anything_is_created() {
    let Some(moto) = moto() else { return };
    let ep = moto.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(
        dir.path(),
        &[("eu-west-1", SEED_AMI), ("ap-south-1", SEED_AMI)],
    );
    let plan = plan(dir.path(), &sc, &ep, "", "ob-test-noregion");
    let b = AwsBuilder::new(&plan).unwrap();
    let (ctx, _) = context(plan, &dir.path().join("state"), b.cleanup_config());
    let e = b.validate(&ctx).await.unwrap_err().to_string();
    assert!(e.contains("us-east-1"), "{e}");
    assert!(
        e.contains("eu-west-1") && e.contains("ap-south-1"),
        "regions present: {e}"
    );
    assert!(ctx.journal.state().live.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_instance_type_fails_validation() {
    let Some(moto) = moto() else { return };
    let ep = moto.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path(), &[("us-east-1", SEED_AMI)]);
    let t = plan(dir.path(), &sc, &ep, "", "ob-test-badtype");
    let mut t2 = t.clone();
    if let Some(a) = t2.template.builds.aws.as_mut() {
        a.options.instance_type = Some("m99.gigantic".into());
    }
    let b = AwsBuilder::new(&t2).unwrap();
    let (ctx, _) = context(t2, &dir.path().join("state"), b.cleanup_config());
    let e = b.validate(&ctx).await.unwrap_err().to_string();
    assert!(e.contains("m99.gigantic"), "{e}");
}

fn test_disk() -> Vec<u8> {
    // 5 MiB + 100 KiB: data blocks, zero blocks, and a short last block.
    let bs = 512 * 1024;
    let mut d = vec![0u8; 5 * 1024 * 1024 + 100 * 1024];
    for (i, b) in d.iter_mut().enumerate() {
        let block = i / bs;
        if block % 3 != 1 {
            *b = ((i * 7 + block * 13) % 251) as u8 | 1;
        }
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_stemcell_import_reads_back_block_for_block_and_is_reused() {
    let Some(moto) = moto() else { return };
    let ep = moto.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let disk = test_disk();
    let sc = heavy_stemcell(dir.path(), &disk, "2.0");
    let id = "ob-test-heavy-1";
    let plan1 = plan(dir.path(), &sc, &ep, ", upload_concurrency: 4", id);
    let b = AwsBuilder::new(&plan1).unwrap();
    let (ctx, _) = context(plan1, &dir.path().join("state"), b.cleanup_config());
    b.validate(&ctx).await.unwrap();
    let base = b.base_image(&ctx).await.unwrap();
    assert_eq!(
        base.details.get("source").map(String::as_str),
        Some("imported")
    );
    let snap = base.details.get("snapshot").unwrap().clone();
    // Every block back through the EBS direct APIs equals the raw disk.
    let ebs = opsbake_iaas_aws::clients::Clients::with_attempts("us-east-1", Some(ep.clone()), 1)
        .ebs("us-east-1")
        .await
        .unwrap();
    // moto's ListSnapshotBlocks answers block indexes as strings, which the
    // SDK refuses: read every index with GetSnapshotBlock instead (moto
    // ignores the block token). Zero blocks must be absent.
    let bs = 512 * 1024;
    let blocks = disk.len().div_ceil(bs);
    let mut uploaded = 0;
    for idx in 0..blocks {
        let mut want = disk[idx * bs..((idx + 1) * bs).min(disk.len())].to_vec();
        let zero = want.iter().all(|b| *b == 0);
        want.resize(bs, 0);
        let got = ebs
            .get_snapshot_block()
            .snapshot_id(&snap)
            .block_index(idx as i32)
            .block_token("any")
            .send()
            .await;
        match got {
            Ok(got) => {
                assert!(!zero, "zero block {idx} was uploaded");
                let data = got.block_data.collect().await.unwrap().into_bytes();
                assert!(data.as_ref() == want.as_slice(), "block {idx} differs");
                uploaded += 1;
            }
            Err(e) => assert!(zero, "block {idx} missing: {e:?}"),
        }
    }
    assert_eq!(
        base.details.get("blocks_uploaded").map(String::as_str),
        Some(uploaded.to_string().as_str())
    );
    assert!(uploaded > 0 && uploaded < blocks);
    // The AMI: HVM, ENA, root device from the MF, tagged with the sha1.
    let c = ec2(&ep, "us-east-1").await;
    let img = c
        .describe_images()
        .image_ids(&base.id)
        .send()
        .await
        .unwrap();
    let img = &img.images()[0];
    assert_eq!(img.root_device_name(), Some("/dev/sda1"));
    // (moto keeps neither the virtualization type nor the ENA flag of
    // RegisterImage, and backs the AMI with a snapshot of its own instead of
    // the one in the mapping: only the root device can be checked here.)
    assert!(img
        .block_device_mappings()
        .iter()
        .any(|b| b.device_name() == Some("/dev/sda1")));
    let tags = tag_map(img.tags());
    assert_eq!(
        tags.get("opsbake:role").map(String::as_str),
        Some("base-image")
    );
    assert!(tags.contains_key("opsbake:stemcell-sha1"));
    // Kept: a failed build's unwind leaves the base image for the next one.
    let left = unwind(&ctx.journal, &b, &ctx.events, &CleanupTracker::default()).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        c.describe_images()
            .image_ids(&base.id)
            .send()
            .await
            .unwrap()
            .images()
            .len(),
        1
    );
    // The next build reuses it ...
    let plan2 = plan(dir.path(), &sc, &ep, "", "ob-test-heavy-2");
    let b2 = AwsBuilder::new(&plan2).unwrap();
    let (ctx2, _) = context(plan2, &dir.path().join("state"), b2.cleanup_config());
    let base2 = b2.base_image(&ctx2).await.unwrap();
    assert_eq!(base2.id, base.id);
    assert_eq!(
        base2.details.get("source").map(String::as_str),
        Some("reused")
    );
    // ... unless told to import again.
    let plan3 = plan(dir.path(), &sc, &ep, ", reimport: true", "ob-test-heavy-3");
    let b3 = AwsBuilder::new(&plan3).unwrap();
    let (ctx3, _) = context(plan3, &dir.path().join("state"), b3.cleanup_config());
    let base3 = b3.base_image(&ctx3).await.unwrap();
    assert_ne!(base3.id, base.id);
    // And the sweep of the importing build does not count base images.
    assert!(b.sweep(id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_unwinds_everything_including_its_amis() {
    let Some(moto) = moto() else { return };
    let ep = moto.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(
        dir.path(),
        &[("us-east-1", SEED_AMI), ("eu-west-1", SEED_AMI)],
    );
    let id = "ob-test-fail-1";
    let plan = plan(dir.path(), &sc, &ep, ", copy_regions: [eu-west-1]", id);
    let b = AwsBuilder::new(&plan).unwrap();
    let (ctx, _) = context(plan, &dir.path().join("state"), b.cleanup_config());
    b.validate(&ctx).await.unwrap();
    let base = b.base_image(&ctx).await.unwrap();
    let key = Arc::new(key(dir.path()));
    b.launch(&ctx, &base, &Access { key: Some(key) })
        .await
        .unwrap();
    b.capture(&ctx).await.unwrap();
    let before = leftovers(&ep, &["us-east-1", "eu-west-1"], id).await;
    assert!(before.len() >= 6, "{before:?}");
    // As if the export step failed: nothing is kept. Delete through a
    // deleter made from the journal's cleanup_config, as `opsbake cleanup`.
    let st = ctx.journal.state();
    let j = ctx.journal.clone();
    for r in st.kept {
        // Un-keep: record the images as live again by re-adding them.
        let seq = j.intent(&r.kind, &r.name, r.data.clone()).unwrap();
        j.created(seq, r.id.as_deref().unwrap(), serde_json::Value::Null)
            .unwrap();
    }
    let d = opsbake_iaas_aws::deleter(&st.header.unwrap().cleanup_config).unwrap();
    let left = unwind(&j, d.as_ref(), &ctx.events, &CleanupTracker::default()).await;
    assert!(left.is_empty(), "{left:?}");
    let after = leftovers(&ep, &["us-east-1", "eu-west-1"], id).await;
    assert!(after.is_empty(), "{after:?}");
    assert!(d.sweep(id).await.unwrap().is_empty());
}
