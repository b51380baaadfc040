//! Retries, waiter backoff and timeouts, and held calls, through the
//! fault-injecting proxy in front of moto (moto flips states instantly).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use opsbake_core::builder::{Access, Builder};
use opsbake_iaas_aws::wait::Waiter;
use opsbake_iaas_aws::AwsBuilder;
use opsbake_test_support::fault_proxy::{Fault, FaultProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_are_retried_by_the_sdk() {
    let Some(moto) = moto() else { return };
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let ep = proxy.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path(), &[("us-east-1", SEED_AMI)]);
    let id = "ob-test-retry-1";
    let plan = plan(dir.path(), &sc, &ep, "", id);
    let b = AwsBuilder::new(&plan).unwrap();
    let (ctx, _) = context(plan, &dir.path().join("state"), b.cleanup_config());
    proxy.rule("DescribeInstanceTypes", Fault::Throttle, Some(2));
    // Answered without reaching moto, so a retry cannot make a second instance.
    proxy.rule("RunInstances", Fault::Status(503), Some(1));
    proxy.rule("CreateImage", Fault::Throttle, Some(1));
    b.validate(&ctx).await.unwrap();
    let base = b.base_image(&ctx).await.unwrap();
    let key = Arc::new(key(dir.path()));
    b.launch(&ctx, &base, &Access { key: Some(key) })
        .await
        .unwrap();
    let art = b.capture(&ctx).await.unwrap();
    assert!(art.id.starts_with("us-east-1:ami-"));
    assert_eq!(proxy.count("DescribeInstanceTypes"), 3);
    assert_eq!(proxy.count("RunInstances"), 2);
    assert_eq!(proxy.count("CreateImage"), 2);
    let c = ec2(&moto.endpoint(), "us-east-1").await;
    let n = c
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .count();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiter_backs_off_to_its_cap_and_times_out_naming_the_wait() {
    let Some(moto) = moto() else { return };
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let ep = proxy.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path(), &[("us-east-1", SEED_AMI)]);
    let plan = plan(dir.path(), &sc, &ep, "", "ob-test-wait-1");
    let mut b = AwsBuilder::new(&plan).unwrap();
    b.set_waiter(Waiter {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(800),
        timeout: Duration::from_secs(4),
    });
    // An AMI that never appears: moto says NotFound, the waiter "not yet".
    let missing = "ami-00000000000000dead";
    // moto sets a region up on its first call (seconds): not part of the wait.
    ec2(&moto.endpoint(), "us-east-1")
        .await
        .describe_images()
        .image_ids(SEED_AMI)
        .send()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = b
        .wait_image("us-east-1", missing)
        .await
        .unwrap_err()
        .to_string();
    let took = started.elapsed();
    assert!(e.contains("timed out") && e.contains(missing), "{e}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(7),
        "{took:?}"
    );
    let at: Vec<Duration> = proxy
        .calls()
        .iter()
        .filter(|c| c.action == "DescribeImages")
        .map(|c| c.at)
        .collect();
    assert!(
        (6..=12).contains(&at.len()),
        "{} polls: {:?}",
        at.len(),
        proxy.calls()
    );
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // First gap about 200 ms, growing, never much over the 800 ms cap.
    assert!(gaps[0] >= Duration::from_millis(170), "{gaps:?}");
    assert!(gaps[0] < Duration::from_millis(500), "{gaps:?}");
    assert!(gaps[3] > gaps[0], "no backoff: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(1100)),
        "{gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_whose_polls_keep_failing_with_503_times_out_with_the_last_error() {
    let Some(moto) = moto() else { return };
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let ep = proxy.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path(), &[("us-east-1", SEED_AMI)]);
    let plan = plan(dir.path(), &sc, &ep, "", "ob-test-wait-2");
    let mut b = AwsBuilder::new(&plan).unwrap();
    b.set_waiter(Waiter {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(800),
        timeout: Duration::from_secs(2),
    });
    proxy.rule("DescribeImages", Fault::Status(503), None);
    let e = b
        .wait_image("us-east-1", SEED_AMI)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("timed out") && e.contains("Unavailable"), "{e}");
    // The SDK retried each poll before the waiter saw the error.
    assert!(
        proxy.count("DescribeImages") >= opsbake_iaas_aws::clients::MAX_ATTEMPTS as usize,
        "{}",
        proxy.count("DescribeImages")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_create_call_is_journaled_as_intent_before_it_returns() {
    let Some(moto) = moto() else { return };
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let ep = proxy.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path(), &[("us-east-1", SEED_AMI)]);
    let plan = plan(dir.path(), &sc, &ep, "", "ob-test-hold-1");
    let b = Arc::new(AwsBuilder::new(&plan).unwrap());
    let (ctx, _) = context(plan, &dir.path().join("state"), b.cleanup_config());
    let base = b.base_image(&ctx).await.unwrap();
    proxy.rule("CreateSecurityGroup", Fault::HoldResponse, Some(1));
    let key = Arc::new(key(dir.path()));
    let (b2, ctx2) = (b.clone(), ctx.clone());
    let launch = tokio::spawn(async move {
        b2.launch(&ctx2, &base, &Access { key: Some(key) })
            .await
            .map(|_| ())
    });
    let what = tokio::task::block_in_place(|| proxy.wait_held(Duration::from_secs(20)));
    assert_eq!(what.as_deref(), Some("CreateSecurityGroup"));
    // moto has the group; the journal knows it only by intent.
    let live = ctx.journal.state().live;
    let sg = live
        .iter()
        .find(|r| r.kind == "aws_security_group")
        .unwrap();
    assert_eq!(sg.id, None);
    let c = ec2(&moto.endpoint(), "us-east-1").await;
    let groups = c
        .describe_security_groups()
        .group_names("opsbake-ob-test-hold-1")
        .send()
        .await
        .unwrap();
    assert_eq!(groups.security_groups().len(), 1);
    proxy.release();
    launch.await.unwrap().unwrap();
    let live = ctx.journal.state().live;
    let sg = live
        .iter()
        .find(|r| r.kind == "aws_security_group")
        .unwrap();
    assert!(sg.id.as_deref().unwrap().starts_with("us-east-1:sg-"));
}
