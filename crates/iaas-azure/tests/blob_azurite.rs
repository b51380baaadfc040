//! The page-blob upload against azurite: only non-zero pages are sent, each
//! Put Page at most 4 MiB, the blob reads back equal to the VHD; a cut in
//! the middle resumes from Get Page Ranges without re-sending what azurite
//! already holds (counted by a proxy); the VHD streamed out of a stemcell.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::Path;

use opsbake_iaas_azure::blob::{
    upload_vhd, BlobTarget, UploadOptions, VhdSource, MAX_PUT_PAGE, PAGE,
};
use opsbake_iaas_azure::sas::{AccountSas, DEV_ACCOUNT, DEV_KEY};
use opsbake_test_support::azurite::{Azurite, CutProxy};

fn skip() -> bool {
    if std::env::var("OPSBAKE_SKIP_PEERS").as_deref() == Ok("1") {
        eprintln!("OPSBAKE_SKIP_PEERS=1: skipped");
        return true;
    }
    false
}

fn sas() -> AccountSas {
    AccountSas::sign(
        DEV_ACCOUNT,
        DEV_KEY,
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .unwrap()
}

/// A public-read container (so the test and the ARM server read blobs
/// anonymously), created with the SAS.
async fn public_container(base: &str, name: &str) {
    let u = url::Url::parse(&format!("{base}/{name}")).unwrap();
    let c = azure_storage_blob::BlobContainerClient::new(sas().apply(&u), None, None).unwrap();
    c.create(Some(
        azure_storage_blob::models::BlobContainerClientCreateOptions {
            access: Some(azure_storage_blob::models::PublicAccessType::Container),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
}

fn target(base: &str, container: &str, blob: &str) -> BlobTarget {
    BlobTarget {
        url: url::Url::parse(&format!("{base}/{container}/{blob}")).unwrap(),
        sas: Some(sas()),
        credential: None,
    }
}

/// A fixed VHD of `mib` MiB: scattered pages, a 9 MiB run, zeros elsewhere,
/// and the footer. Returns (bytes, non-zero bytes before the footer).
fn test_vhd(mib: u64) -> (Vec<u8>, u64) {
    let size = mib * 1024 * 1024;
    let mut d = vec![0u8; size as usize];
    for (i, b) in d[..512].iter_mut().enumerate() {
        *b = i as u8 | 1;
    }
    d[5 * 512 + 3] = 9;
    for (i, b) in d[2 * 1024 * 1024..11 * 1024 * 1024].iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    d[(size - 4096) as usize] = 1;
    let nonzero = d.chunks(PAGE).filter(|p| p.iter().any(|b| *b != 0)).count() as u64 * PAGE as u64;
    d.extend_from_slice(&opsbake_stemcell::vhd::footer(size, 1_700_000_000));
    (d, nonzero)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nonzero_pages_capped_at_4mib_and_read_back_equal() {
    if skip() {
        return;
    }
    let az = Azurite::start().unwrap();
    public_container(&az.account_url(), "vhds").await;
    let dir = tempfile::tempdir().unwrap();
    let (vhd, nonzero) = test_vhd(16);
    let p = dir.path().join("root.vhd");
    std::fs::write(&p, &vhd).unwrap();
    let t = target(&az.account_url(), "vhds", "a.vhd");
    let opts = UploadOptions {
        concurrency: 4,
        // Azurite would take 8 MiB: ours must not send it.
        max_put: 8 * 1024 * 1024,
        metadata: vec![("stemcell_sha1".into(), "abc".into())],
        ..UploadOptions::default()
    };
    let r = upload_vhd(&t, &VhdSource::File(p.clone()), &opts)
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(r.passes, 1);
    assert_eq!(r.size, vhd.len() as u64);
    assert!(r.max_put <= MAX_PUT_PAGE as u64 && r.max_put > 0, "{r:?}");
    assert_eq!(r.bytes_sent, nonzero + PAGE as u64, "{r:?}");
    assert!(r.puts >= 5, "{r:?}");
    assert_eq!(az.list_public("vhds"), ["a.vhd"]);
    let back = az.get_public("vhds", "a.vhd").unwrap();
    assert_eq!(back.len(), vhd.len());
    assert!(back == vhd, "blob differs from the VHD");
    // Metadata carries the stemcell sha1.
    let (len, meta) = t.properties().await.unwrap().unwrap();
    assert_eq!(len, vhd.len() as u64);
    assert_eq!(meta.get("stemcell_sha1").map(String::as_str), Some("abc"));
    // A second upload finds the footer and sends nothing.
    let r2 = upload_vhd(&t, &VhdSource::File(p), &opts).await.unwrap();
    assert_eq!(
        (r2.bytes_sent, r2.puts, r2.created),
        (0, 0, false),
        "{r2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_resumes_without_resending_stored_pages() {
    if skip() {
        return;
    }
    let az = Azurite::start().unwrap();
    public_container(&az.account_url(), "vhds").await;
    let proxy = CutProxy::start(az.addr()).unwrap();
    let via = format!("http://{}/{}", proxy.addr(), DEV_ACCOUNT);
    let dir = tempfile::tempdir().unwrap();
    let (vhd, nonzero) = test_vhd(24);
    let p = dir.path().join("root.vhd");
    std::fs::write(&p, &vhd).unwrap();
    let t = target(&via, "vhds", "cut.vhd");
    let opts = UploadOptions {
        concurrency: 2,
        max_put: 1024 * 1024,
        passes: 1,
        ..UploadOptions::default()
    };
    // Cut after about 5 MiB of requests: the first pass fails.
    proxy.cut_after(5 * 1024 * 1024);
    let e = upload_vhd(&t, &VhdSource::File(p.clone()), &opts)
        .await
        .unwrap_err();
    assert!(proxy.is_cut(), "the proxy never cut: {e}");
    assert!(!e.to_string().contains("sig="), "{e}");
    proxy.heal();
    let stored: u64 = t
        .page_ranges()
        .await
        .unwrap()
        .iter()
        .map(|r| r.1 - r.0)
        .sum();
    assert!(
        stored >= 2 * 1024 * 1024,
        "too little stored before the cut: {stored}"
    );
    assert!(
        az.get_public("vhds", "cut.vhd").unwrap()[vhd.len() - 512..] != vhd[vhd.len() - 512..],
        "the footer must not be there before the end"
    );
    let before = proxy.sent();
    let r = upload_vhd(&t, &VhdSource::File(p), &opts).await.unwrap();
    let sent = proxy.sent() - before;
    assert!(!r.created);
    assert_eq!(r.bytes_skipped, stored, "{r:?}");
    assert_eq!(r.bytes_sent, nonzero + PAGE as u64 - stored, "{r:?}");
    // What azurite received on the wire: the missing pages plus headers,
    // far less than the whole data again.
    assert!(sent >= r.bytes_sent, "{sent} < {}", r.bytes_sent);
    assert!(
        sent < r.bytes_sent + 256 * 1024,
        "resume sent {sent} bytes for {} missing",
        r.bytes_sent
    );
    assert!(az.get_public("vhds", "cut.vhd").unwrap() == vhd);
}

fn tgz(members: &[(&str, &[u8])]) -> Vec<u8> {
    opsbake_test_support::stemcell::tgz(members).unwrap()
}

fn write(p: &Path, b: &[u8]) {
    std::fs::File::create(p).unwrap().write_all(b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_vhd_out_of_a_stemcell_without_unpacking() {
    if skip() {
        return;
    }
    let az = Azurite::start().unwrap();
    public_container(&az.account_url(), "vhds").await;
    let dir = tempfile::tempdir().unwrap();
    let (vhd, nonzero) = test_vhd(12);
    let image = tgz(&[("root.vhd", &vhd)]);
    let sc = dir
        .path()
        .join("bosh-stemcell-1.0-azure-hyperv-debian-bookworm-go_agent.tgz");
    write(
        &sc,
        &tgz(&[("stemcell.MF", b"name: x\n"), ("image", &image)]),
    );
    let t = target(&az.account_url(), "vhds", "sc.vhd");
    let r = upload_vhd(&t, &VhdSource::Stemcell(sc), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(r.bytes_sent, nonzero + PAGE as u64);
    assert!(az.get_public("vhds", "sc.vhd").unwrap() == vhd);
    // Nothing was unpacked next to the stemcell.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
