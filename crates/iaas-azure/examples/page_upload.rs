//! Upload a fixed VHD file into a page blob (the benchmark's opsbake side):
//! `page_upload <account-url> <container> <blob> <vhd> [concurrency]`, SAS
//! signed with azurite's development key. Prints one JSON line.

use std::sync::Arc;

use opsbake_iaas_azure::blob::{upload_vhd, BlobTarget, UploadOptions, VhdSource};
use opsbake_iaas_azure::sas::{AccountSas, DEV_ACCOUNT, DEV_KEY};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        return Err(
            "usage: page_upload <account-url> <container> <blob> <vhd> [concurrency]".into(),
        );
    }
    let sas = AccountSas::sign(
        DEV_ACCOUNT,
        DEV_KEY,
        time::OffsetDateTime::now_utc() + time::Duration::hours(2),
    )?;
    let t = BlobTarget {
        url: url::Url::parse(&format!("{}/{}/{}", a[1], a[2], a[3]))?,
        sas: Some(sas),
        credential: None::<Arc<dyn azure_core::credentials::TokenCredential>>,
    };
    t.ensure_container().await?;
    let opts = UploadOptions {
        concurrency: a.get(5).and_then(|c| c.parse().ok()).unwrap_or(8),
        ..UploadOptions::default()
    };
    let t0 = std::time::Instant::now();
    let r = upload_vhd(&t, &VhdSource::File(a[4].clone().into()), &opts).await?;
    println!(
        "{{\"seconds\": {:.3}, \"bytes_sent\": {}, \"puts\": {}, \"size\": {}}}",
        t0.elapsed().as_secs_f64(),
        r.bytes_sent,
        r.puts,
        r.size
    );
    Ok(())
}
