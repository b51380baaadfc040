//! The OVA export path: the lease's disk downloaded (with the vCenter
//! session cookie) from test-support's NFC export server, since vcsim does
//! not implement `ExportVm`; the OVA written with the stemcell crate's OVF
//! and OVA writers; then checked like the vbox one: its `.mf` digests
//! verify, and `govc import.ova` into vcsim gives a VM with the CPUs,
//! memory, disk capacity and NIC the descriptor declares. A lease whose
//! host fails (HTTP 500) is an error naming the URL, and nothing is written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::time::Duration;

use opsbake_core::Secret;
use opsbake_iaas_vsphere::capture::{download_lease, write_ova, OvaSpec};
use opsbake_iaas_vsphere::import::DeviceUrl;
use opsbake_iaas_vsphere::vim::tls::{parse_thumbprint, TlsMode};
use opsbake_iaas_vsphere::vim::{normalise_url, MoRef, Vim};
use opsbake_test_support::nfc_export::NfcExport;
use opsbake_test_support::vcsim::{skip_peers, Vcsim};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn export_lease_download_makes_an_ova_govc_imports() {
    let v = match Vcsim::start() {
        Ok(v) => v,
        Err(e) if skip_peers() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    // a 64 MiB disk with data in a few places, as a streamOptimized VMDK
    let raw = dir.path().join("disk.raw");
    {
        let mut f = std::fs::File::create(&raw).unwrap();
        f.set_len(64 << 20).unwrap();
        for (i, at) in [0u64, 5 << 20, 40 << 20].iter().enumerate() {
            use std::io::Seek as _;
            f.seek(std::io::SeekFrom::Start(*at)).unwrap();
            f.write_all(&vec![b'a' + i as u8; 300_000]).unwrap();
        }
    }
    let served = dir.path().join("served.vmdk");
    opsbake_stemcell::vmdk::write_stream_optimized(&raw, &served, &Default::default()).unwrap();
    let nfc = NfcExport::start(&[("/nfc/52a1-lease/disk-0.vmdk", served.clone())]).unwrap();

    let (url, _, _) = normalise_url(&v.sdk_url()).unwrap();
    let tp = parse_thumbprint(&v.thumbprint().unwrap()).unwrap();
    let vim = Vim::connect(&url, &TlsMode::Thumbprint(tp), Duration::from_secs(60))
        .await
        .unwrap();
    vim.login("user", &Secret::new("pass".into()))
        .await
        .unwrap();
    let lease = MoRef::new("HttpNfcLease", "52a1-lease");
    let urls = vec![
        DeviceUrl {
            key: "/vm-1/VirtualLsiLogicController0:0".into(),
            import_key: String::new(),
            url: nfc.url("/nfc/52a1-lease/disk-0.vmdk"),
            target_id: "disk-0.vmdk".into(),
            disk: true,
        },
        // not a disk (an nvram file): not downloaded
        DeviceUrl {
            key: "/vm-1/nvram".into(),
            import_key: String::new(),
            url: nfc.url("/nfc/52a1-lease/vm.nvram"),
            target_id: "vm.nvram".into(),
            disk: false,
        },
    ];
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let cancel = CancellationToken::new();
    let disks = download_lease(&vim, &lease, &urls, &work, &cancel)
        .await
        .unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(
        std::fs::read(&disks[0].1).unwrap(),
        std::fs::read(&served).unwrap()
    );
    assert_eq!(nfc.requests(), 1);
    assert!(
        nfc.cookies()
            .iter()
            .any(|c| c.starts_with("vmware_soap_session=")),
        "the session cookie travels with the download: {:?}",
        nfc.cookies()
    );

    let out = dir.path().join("appliance-export.ova");
    let spec = OvaSpec {
        name: "appliance-export".into(),
        cpus: 2,
        memory_mib: 2048,
        network: "VM Network".into(),
        os_id: 96,
        mtime: 0,
    };
    let (size, digests) = write_ova(&disks[0].1, &out, &spec).unwrap();
    assert_eq!(size, std::fs::metadata(&out).unwrap().len());
    assert_eq!(digests.len(), 2, "{digests:?}");
    // the members: descriptor first, then the manifest, then the disk
    let mut names = Vec::new();
    let ex = dir.path().join("ex");
    std::fs::create_dir_all(&ex).unwrap();
    let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let n = e.path().unwrap().display().to_string();
        e.unpack(ex.join(&n)).unwrap();
        names.push(n);
    }
    assert_eq!(
        names,
        [
            "appliance-export.ovf",
            "appliance-export.mf",
            "appliance-export-disk1.vmdk"
        ]
    );
    opsbake_stemcell::ovf::verify_mf(&ex, "appliance-export.mf").unwrap();
    // a third-party reader: govc imports it and the VM matches the OVF
    let vm = v.import_ova(&out, "exported").unwrap();
    assert_eq!(vm.cpus, 2);
    assert_eq!(vm.memory_mib, 2048);
    assert_eq!(vm.disks.len(), 1);
    // the descriptor declares the disk's real capacity (import_ova already
    // compared vcsim's reading of it, KiB for a unit-less capacity)
    assert_eq!(vm.declared.disks[0].capacity_bytes, Some(64 << 20));

    // the lease's host fails: an error naming the URL, no file
    nfc.fail(true);
    let work2 = dir.path().join("work2");
    std::fs::create_dir_all(&work2).unwrap();
    let e = download_lease(&vim, &lease, &urls, &work2, &cancel)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("/nfc/52a1-lease/disk-0.vmdk") && e.to_string().contains("500"),
        "{e}"
    );
    assert!(std::fs::read_dir(&work2).unwrap().next().is_none());
}
