//! A small stand-in for the download side of a vSphere `HttpNfcLease`
//! (`ExportVm`): vcsim 0.24 (and current govmomi) does not implement
//! `ExportVm`, so the OVA export path downloads from this server instead.
//!
//! Plain HTTP/1.1 on 127.0.0.1 with a random port, one thread per
//! connection; `GET /nfc/<lease>/<file>` answers the file's bytes with a
//! `Content-Length` (as ESXi's NFC service does), anything else 404. It
//! counts the requests and the bytes sent, can be told to fail with a 500
//! (a lease whose host went away), and records the `Cookie` header it got
//! (vCenter's session travels with each download). Stopped on drop.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the server saw.
#[derive(Debug, Default)]
struct Shared {
    files: BTreeMap<String, PathBuf>,
    fail: AtomicBool,
    stop: AtomicBool,
    requests: AtomicU64,
    bytes: AtomicU64,
    cookies: Mutex<Vec<String>>,
}

/// The running server.
#[derive(Debug)]
pub struct NfcExport {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl NfcExport {
    /// Serve `files` (`(url path, file)`, e.g. `("/nfc/lease-1/disk-0.vmdk", p)`).
    pub fn start(files: &[(&str, PathBuf)]) -> std::io::Result<NfcExport> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let shared = Arc::new(Shared {
            files: files
                .iter()
                .map(|(u, p)| (u.to_string(), p.clone()))
                .collect(),
            ..Shared::default()
        });
        let s2 = shared.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if s2.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = c else { continue };
                let s3 = s2.clone();
                std::thread::spawn(move || {
                    let _ = serve(c, &s3);
                });
            }
        });
        Ok(NfcExport { addr, shared })
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer 500 from now on.
    pub fn fail(&self, on: bool) {
        self.shared.fail.store(on, Ordering::Relaxed);
    }

    /// Requests served.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Body bytes sent.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// `Cookie` headers received.
    pub fn cookies(&self) -> Vec<String> {
        self.shared
            .cookies
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }
}

impl Drop for NfcExport {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // wake the accept loop
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(c: TcpStream, s: &Shared) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("cookie") {
                    if let Ok(mut c) = s.cookies.lock() {
                        c.push(v.trim().to_string());
                    }
                }
            }
        }
        s.requests.fetch_add(1, Ordering::Relaxed);
        let file = s.files.get(&path).cloned();
        if s.fail.load(Ordering::Relaxed) {
            w.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        match (method.as_str(), file) {
            ("GET", Some(p)) => {
                let body = std::fs::read(&p)?;
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                w.write_all(&body)?;
                s.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            _ => w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
        }
        w.flush()?;
    }
}
