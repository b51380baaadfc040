//! Reading a VHD blob from azurite the way Azure reads an image's source:
//! length, footer check, and a hash of the whole blob.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Read the blob's length (HEAD) and last 512 bytes (Range) anonymously from
/// a loopback blob endpoint and check the fixed VHD footer: cookie
/// `conectix`, disk type 2 (fixed), current size = blob length - 512; then
/// read it whole and hash it (what Azure copies into the image).
pub(super) fn check_vhd_blob(
    uri: &str,
    copy_to: &std::path::Path,
) -> Result<(u64, String), String> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or("only http:// blob URIs (azurite) are read by the test server")?;
    let (hostport, path) = rest.split_once('/').ok_or("no path")?;
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| format!("{hostport} is not ip:port"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not loopback: never contacted"));
    }
    let path = format!("/{path}");
    let (st, head, _) = raw(addr, "HEAD", &path, None)?;
    if st != 200 {
        return Err(format!("HEAD answered {st}"));
    }
    let len: u64 = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or("no content-length")?;
    if len < 1024 || !len.is_multiple_of(512) {
        return Err(format!("length {len} is not a multiple of 512"));
    }
    let (st, _, body) = raw(
        addr,
        "GET",
        &path,
        Some(format!("bytes={}-{}", len - 512, len - 1)),
    )?;
    if st != 206 && st != 200 {
        return Err(format!("range read answered {st}"));
    }
    let f = if body.len() == 512 {
        body
    } else {
        body[body.len().saturating_sub(512)..].to_vec()
    };
    if &f[..8] != b"conectix" {
        return Err("no `conectix` cookie in the last 512 bytes".into());
    }
    let disk_type = u32::from_be_bytes([f[60], f[61], f[62], f[63]]);
    if disk_type != 2 {
        return Err(format!("disk type {disk_type} is not 2 (fixed)"));
    }
    let current = u64::from_be_bytes([f[48], f[49], f[50], f[51], f[52], f[53], f[54], f[55]]);
    if current != len - 512 {
        return Err(format!("footer size {current} != blob length {len} - 512"));
    }
    Ok((len, hash_blob(addr, &path, copy_to)?))
}

/// A small fixed VHD: 4 MiB of disk (the first MiB a marker naming the
/// disk, the rest zeros) and its 512-byte footer.
pub fn synthetic_vhd(name: &str) -> Vec<u8> {
    let size: u64 = 4 << 20;
    let mut v = vec![0u8; size as usize];
    let marker = format!("opsbake-arm-test-disk {name}\n");
    for (i, b) in v[..1 << 20].iter_mut().enumerate() {
        *b = marker.as_bytes()[i % marker.len()];
    }
    v.extend_from_slice(&vhd_footer(size));
    v
}

/// The footer of a fixed VHD of `size` bytes (VHD specification, "Hard
/// Disk Footer Format").
pub fn vhd_footer(size: u64) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    f[28..32].copy_from_slice(b"obak");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    // CHS geometry of `size` (spec's algorithm, capped).
    let sectors = (size / 512).min(65535 * 16 * 255);
    let (spt, heads) = if sectors >= 65535 * 16 * 63 {
        (255u64, 16u64)
    } else {
        (17, 4.max((sectors / 17).div_ceil(1024)).min(16))
    };
    let cyl = sectors / spt / heads;
    f[56..58].copy_from_slice(&(cyl as u16).to_be_bytes());
    f[58] = heads as u8;
    f[59] = spt as u8;
    f[60..64].copy_from_slice(&2u32.to_be_bytes());
    f[68..84].copy_from_slice(b"opsbake-armtest1");
    let sum: u32 = f.iter().map(|b| u32::from(*b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

fn hash_blob(addr: SocketAddr, path: &str, copy_to: &std::path::Path) -> Result<String, String> {
    use sha2::Digest as _;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-ms-version: 2021-12-02\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, s);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        r.read_exact(&mut byte).map_err(|e| e.to_string())?;
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    if text.contains("transfer-encoding: chunked") {
        return Err("chunked blob answer not handled".into());
    }
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    // The image's own copy (Azure copies the blob into the image).
    let mut copy = std::io::BufWriter::new(
        std::fs::File::create(copy_to).map_err(|e| format!("{}: {e}", copy_to.display()))?,
    );
    loop {
        let n = r.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        copy.write_all(&buf[..n]).map_err(|e| e.to_string())?;
    }
    copy.flush().map_err(|e| e.to_string())?;
    Ok(hex::encode(h.finalize()))
}

fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    range: Option<String>,
) -> Result<(u16, String, Vec<u8>), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nx-ms-version: 2021-12-02\r\nConnection: close\r\n");
    if let Some(r) = range {
        req.push_str(&format!("Range: {r}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head")?;
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or("bad status line")?;
    Ok((status, head, out[end + 4..].to_vec()))
}
