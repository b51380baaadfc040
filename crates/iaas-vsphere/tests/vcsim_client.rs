//! The vim25 client against vcsim (test-support starts it on 127.0.0.1 and
//! stops it by PID): TLS pinned to vcsim's thumbprint as govc prints it,
//! login and typed faults, properties, inventory paths, task waits through
//! WaitForUpdatesEx, and a guest address set from outside while waiting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use opsbake_core::Secret;
use opsbake_iaas_vsphere::error::VsphereError;
use opsbake_iaas_vsphere::vim::tls::{parse_thumbprint, TlsMode};
use opsbake_iaas_vsphere::vim::xml::el;
use opsbake_iaas_vsphere::vim::{normalise_url, this, Vim};
use opsbake_test_support::vcsim::{skip_peers, Vcsim};
use tokio_util::sync::CancellationToken;

fn start() -> Option<Vcsim> {
    match Vcsim::start_with(&["-username", "user", "-password", "pass"]) {
        Ok(v) => Some(v),
        Err(e) if skip_peers() => {
            eprintln!("skipped (OPSBAKE_SKIP_PEERS=1): {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

async fn connect(v: &Vcsim) -> Vim {
    let (url, _, _) = normalise_url(&v.sdk_url()).unwrap();
    let tp = parse_thumbprint(&v.thumbprint().unwrap()).unwrap();
    Vim::connect(&url, &TlsMode::Thumbprint(tp), Duration::from_secs(60))
        .await
        .unwrap()
}

#[tokio::test]
async fn pinned_tls_login_faults_properties_and_task_waits() {
    let Some(v) = start() else { return };
    let (url, _, _) = normalise_url(&v.sdk_url()).unwrap();

    // a wrong pin is refused before any SOAP is spoken
    let wrong = TlsMode::Thumbprint(vec![0xAB; 32]);
    let e = Vim::connect(&url, &wrong, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not the pinned"), "{e}");
    // the system roots do not know vcsim's self-signed certificate
    assert!(
        Vim::connect(&url, &TlsMode::System, Duration::from_secs(30))
            .await
            .is_err()
    );

    let vim = connect(&v).await;
    assert_eq!(vim.sc.api_type, "VirtualCenter");

    // wrong password: InvalidLogin naming the user, not the password
    let e = vim
        .login("user", &Secret::new("hunter2-wrong".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, VsphereError::InvalidLogin { .. }), "{e:?}");
    let msg = format!("{e} {e:?}");
    assert!(msg.contains("user") && !msg.contains("hunter2"), "{msg}");
    vim.login("user", &Secret::new("pass".into()))
        .await
        .unwrap();

    // inventory paths
    let dc = vim.find_by_path("DC0").await.unwrap().unwrap();
    assert_eq!(dc.kind, "Datacenter");
    assert!(vim
        .find_by_path("DC0/datastore/NoSuchDS")
        .await
        .unwrap()
        .is_none());
    let vm = vim
        .find_by_path("DC0/vm/DC0_C0_RP0_VM0")
        .await
        .unwrap()
        .unwrap();

    // properties over a container view (every VM, with their names)
    let all = vim
        .list(
            &vim.sc.root_folder,
            "VirtualMachine",
            &["name", "runtime.powerState"],
        )
        .await
        .unwrap();
    let names: Vec<String> = all
        .iter()
        .filter_map(|o| o.props.get("name").map(|n| n.text.clone()))
        .collect();
    assert!(names.contains(&"DC0_C0_RP0_VM0".to_string()), "{names:?}");
    assert_eq!(all.len(), v.vm_paths().unwrap().len());

    // a task waited for through WaitForUpdatesEx, then a typed fault
    let cancel = CancellationToken::new();
    assert_eq!(
        vim.prop_text(&vm, "runtime.powerState").await.unwrap(),
        "poweredOn"
    );
    vim.run_task(
        "PowerOffVM_Task",
        &this(&vm),
        "vm0",
        Duration::from_secs(60),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(
        vim.prop_text(&vm, "runtime.powerState").await.unwrap(),
        "poweredOff"
    );
    let e = vim
        .run_task(
            "PowerOffVM_Task",
            &this(&vm),
            "DC0/vm/DC0_C0_RP0_VM0",
            Duration::from_secs(60),
            &cancel,
        )
        .await
        .unwrap_err();
    match &e {
        VsphereError::InvalidPowerState {
            object, existing, ..
        } => {
            assert_eq!(object, "DC0/vm/DC0_C0_RP0_VM0");
            assert_eq!(existing, "poweredOff");
        }
        other => panic!("{other:?}"),
    }

    // DuplicateName: a folder named like an existing VM (vcsim checks
    // names there; the builder checks VM names itself before cloning)
    let folder = vim.find_by_path("DC0/vm").await.unwrap().unwrap();
    let body = format!("{}{}", this(&folder), el("name", "DC0_C0_RP0_VM1"));
    let e = vim
        .call("CreateFolder", &body, "DC0/vm/DC0_C0_RP0_VM1")
        .await
        .unwrap_err();
    assert!(matches!(e, VsphereError::DuplicateName { .. }), "{e:?}");
    assert!(e.to_string().contains("DC0_C0_RP0_VM1"), "{e}");

    // a deleted object: ManagedObjectNotFound naming it
    let gone = opsbake_iaas_vsphere::vim::MoRef::new("VirtualMachine", "vm-999999");
    let e = vim
        .run_task(
            "PowerOnVM_Task",
            &this(&gone),
            "vm-999999",
            Duration::from_secs(60),
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("vm-999999"), "{e}");

    vim.logout().await.unwrap();
}

#[tokio::test]
async fn guest_address_wait_sees_a_change_made_meanwhile_and_times_out_exactly() {
    let Some(v) = start() else { return };
    let vim = connect(&v).await;
    vim.login("user", &Secret::new("pass".into()))
        .await
        .unwrap();
    let vm = vim
        .find_by_path("DC0/vm/DC0_H0_VM0")
        .await
        .unwrap()
        .unwrap();
    let cancel = CancellationToken::new();

    // nothing reports 198.51.100.7 yet: the wait ends at its limit
    let t0 = std::time::Instant::now();
    let e = vim
        .wait_for(
            &vm,
            &["guest.ipAddress"],
            "guest.ipAddress",
            Duration::from_secs(2),
            &cancel,
            |p| {
                (p.get("guest.ipAddress").map(|n| n.text.as_str()) == Some("198.51.100.7"))
                    .then_some(Ok(()))
            },
        )
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, VsphereError::Timeout { .. }), "{e:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // set from outside (govc, as VMware Tools would report it) while waiting
    let govc_vm = "/DC0/vm/DC0_H0_VM0".to_string();
    let setter = {
        let url = v.url().to_string();
        let govc = v.govc_path().to_path_buf();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let st = std::process::Command::new(govc)
                .args([
                    "vm.change",
                    "-vm",
                    &govc_vm,
                    "-e",
                    "SET.guest.ipAddress=198.51.100.7",
                ])
                .env("GOVC_URL", url)
                .env("GOVC_INSECURE", "1")
                .status()
                .unwrap();
            assert!(st.success());
        })
    };
    let ip = vim
        .wait_for(
            &vm,
            &["guest.ipAddress"],
            "guest.ipAddress",
            Duration::from_secs(30),
            &cancel,
            |p| {
                p.get("guest.ipAddress")
                    .map(|n| n.text.clone())
                    .filter(|s| s == "198.51.100.7")
                    .map(Ok)
            },
        )
        .await
        .unwrap();
    setter.join().unwrap();
    assert_eq!(ip, "198.51.100.7");

    // cancellation ends a wait at once
    let c2 = CancellationToken::new();
    let c3 = c2.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c3.cancel();
    });
    let e = vim
        .wait_for(
            &vm,
            &["guest.ipAddress"],
            "guest.ipAddress",
            Duration::from_secs(60),
            &c2,
            |_| None::<Result<(), VsphereError>>,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, VsphereError::Cancelled(_)), "{e:?}");
}

/// The sweep of `opsbake cleanup` finds a build's VMs by the custom
/// attribute `opsbake.build-id` (CustomFieldsManager: defined once, set
/// with SetField, read back by govc as a third party) and by the name
/// prefix, each on its own (no ExtraConfig on those VMs); VMs of another
/// build or without a mark are not taken.
#[tokio::test]
async fn sweep_finds_vms_by_custom_attribute_and_by_name_prefix() {
    use opsbake_iaas_vsphere::cleanup::{CleanupConfig, VsphereDeleter};
    use opsbake_iaas_vsphere::custom;
    use std::sync::Arc;
    let Some(v) = start() else { return };
    let vim = connect(&v).await;
    vim.login("user", &Secret::new("pass".into()))
        .await
        .unwrap();
    let id = "ob-20261206-000000-vsphere-abc123";
    let find = |p: &str| {
        let vim = &vim;
        let p = p.to_string();
        async move { vim.find_by_path(&p).await.unwrap().unwrap() }
    };
    let tagged = find("DC0/vm/DC0_C0_RP0_VM0").await;
    let other = find("DC0/vm/DC0_C0_RP0_VM1").await;
    assert!(custom::field_key(&vim).await.unwrap().is_none());
    custom::tag(&vim, &tagged, "DC0_C0_RP0_VM0", id)
        .await
        .unwrap();
    custom::tag(&vim, &other, "DC0_C0_RP0_VM1", "ob-another-build")
        .await
        .unwrap();
    // defined once: a second ensure gives the same key
    let key = custom::field_key(&vim).await.unwrap().unwrap();
    assert_eq!(custom::ensure_field(&vim).await.unwrap(), key);
    // govc, a third-party reader, sees the attribute and its value
    let info = v
        .govc(["fields.info", "/DC0/vm/DC0_C0_RP0_VM0"])
        .unwrap()
        .stdout;
    assert!(info.contains(custom::FIELD) && info.contains(id), "{info}");
    // a VM named with the prefix and the build id, no mark at all
    let renamed = find("DC0/vm/DC0_H0_VM0").await;
    vim.run_task(
        "Rename_Task",
        &format!(
            "{}{}",
            this(&renamed),
            el("newName", &format!("opsbake-{id}"))
        ),
        "DC0_H0_VM0",
        Duration::from_secs(60),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let vim = Arc::new(vim);
    let sweep = |prefix: &str| {
        let d = VsphereDeleter::with_session(
            CleanupConfig {
                name_prefix: prefix.into(),
                ..CleanupConfig::default()
            },
            vim.clone(),
        );
        async move {
            let mut ids: Vec<String> = d
                .sweep_vms(id)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id.unwrap())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![tagged.value.clone(), renamed.value.clone()];
    both.sort();
    assert_eq!(sweep("opsbake-").await, both);
    assert_eq!(sweep("").await, vec![tagged.value.clone()]);
    assert_eq!(sweep("other-").await, vec![tagged.value.clone()]);
}
