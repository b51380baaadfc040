//! SSH host keys as users give them: a public key (`ssh-ed25519 AAAA...`),
//! a whole `known_hosts` line (`host1,[host2]:2222 ssh-ed25519 AAAA...`),
//! a `SHA256:` fingerprint, or an OpenSSH `known_hosts` file (plain,
//! `[host]:port` and hashed `|1|salt|hash` entries). Checked when the
//! template is, without any network.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// A pin entry that stands for the keys of a `known_hosts` file: written by
/// the template's `host_key: {known_hosts: FILE, host: HOST}` and replaced
/// by the file's keys for HOST when the plan is made.
pub const KNOWN_HOSTS_MARK: &str = "@known_hosts";

/// Public key algorithms of OpenSSH.
const ALGORITHMS: [&str; 14] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "ssh-ed448",
];

fn is_algorithm(s: &str) -> bool {
    ALGORITHMS.contains(&s)
}

/// Check that `b64` is the base64 key blob of algorithm `alg` (the blob
/// starts with the algorithm's name).
fn check_blob(alg: &str, b64: &str) -> Result<(), String> {
    let blob = STANDARD
        .decode(b64)
        .map_err(|e| format!("the {alg} key is not valid base64 ({e})"))?;
    let name = blob
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n))
        .ok_or_else(|| format!("the {alg} key blob is truncated"))?;
    if name != alg.as_bytes() {
        return Err(format!(
            "the key blob is a {} key, not {alg}",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(())
}

/// A pin as written in a template, checked and reduced to what the SSH
/// layer compares: `ALG BASE64` for a key or a known_hosts line (host
/// patterns and comment dropped), `SHA256:...` for a fingerprint. The
/// [`KNOWN_HOSTS_MARK`] entry is returned as it is.
pub fn parse_pin(pin: &str) -> Result<String, String> {
    let p = pin.trim();
    if p.starts_with(KNOWN_HOSTS_MARK) {
        return Ok(p.to_string());
    }
    if let Some(fp) = p.strip_prefix("SHA256:") {
        return match STANDARD_NO_PAD.decode(fp.trim_end_matches('=')) {
            Ok(d) if d.len() == 32 => Ok(p.to_string()),
            _ => Err(format!(
                "`{p}` is not a SHA256 fingerprint (`SHA256:` and 43 base64 characters, as `ssh-keygen -lf` prints)"
            )),
        };
    }
    let words: Vec<&str> = p.split_whitespace().collect();
    // `ALG KEY [comment]` or `[marker] HOSTS ALG KEY [comment]`.
    let start = match words.as_slice() {
        [a, ..] if is_algorithm(a) => 0,
        [m, ..] if m.starts_with('@') => {
            return Err(format!(
                "a known_hosts line with the marker `{m}` cannot be a pin (give the host key itself)"
            ))
        }
        [_, a, ..] if is_algorithm(a) => 1,
        _ => {
            return Err(format!(
                "`{}` is not a host key: give a public key (`ssh-ed25519 AAAA...`, as in /etc/ssh/ssh_host_ed25519_key.pub), a known_hosts line, or a `SHA256:...` fingerprint",
                crate::secret::redactor().scrub(short(p))
            ))
        }
    };
    let alg = words[start];
    let b64 = words
        .get(start + 1)
        .ok_or_else(|| format!("`{}`: the {alg} key is missing", short(p)))?;
    check_blob(alg, b64).map_err(|e| format!("`{}`: {e}", short(p)))?;
    Ok(format!("{alg} {b64}"))
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(60) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One usable line of a known_hosts file: its host patterns and its key.
struct Entry<'a> {
    hosts: &'a str,
    key: String,
}

/// The entries of a known_hosts file; a malformed line is an error naming
/// its number. `@revoked` and `@cert-authority` lines are skipped.
fn entries(text: &str) -> Result<Vec<Entry<'_>>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with('@') {
            continue;
        }
        let mut w = l.split_whitespace();
        let (Some(hosts), Some(alg), Some(b64)) = (w.next(), w.next(), w.next()) else {
            return Err(format!("line {}: not `HOSTS ALGORITHM KEY`", n + 1));
        };
        if !is_algorithm(alg) {
            return Err(format!("line {}: `{alg}` is not a key algorithm", n + 1));
        }
        check_blob(alg, b64).map_err(|e| format!("line {}: {e}", n + 1))?;
        out.push(Entry {
            hosts,
            key: format!("{alg} {b64}"),
        });
    }
    Ok(out)
}

/// Check a known_hosts file's text: every line is well formed and there is
/// at least one key.
pub fn check_known_hosts(text: &str) -> Result<usize, String> {
    let n = entries(text)?.len();
    if n == 0 {
        return Err("holds no host key".to_string());
    }
    Ok(n)
}

/// The name a host has in known_hosts: `host`, or `[host]:port` when the
/// port is not 22.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], s) || (!s.is_empty() && m(p, &s[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => m(&p[1..], &s[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), s.as_bytes())
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha1::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha1::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Whether a known_hosts host field matches `name` (`host` or
/// `[host]:port`): comma-separated patterns with `*`, `?` and `!`
/// negation, or one hashed `|1|salt|hash` entry.
pub fn hosts_match(field: &str, name: &str) -> bool {
    if let Some(rest) = field.strip_prefix("|1|") {
        let Some((salt, hash)) = rest.split_once('|') else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
            return false;
        };
        return hmac_sha1(&salt, name.as_bytes())[..] == hash[..];
    }
    let mut matched = false;
    for p in field.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg, name) {
                return false;
            }
        } else if glob(p, name) {
            matched = true;
        }
    }
    matched
}

/// The keys a known_hosts file holds for `name` (`host` or `[host]:port`).
pub fn keys_for(text: &str, name: &str) -> Result<Vec<String>, String> {
    Ok(entries(text)?
        .into_iter()
        .filter(|e| hosts_match(e.hosts, name))
        .map(|e| e.key)
        .collect())
}

/// The `type key` pairs an image prints between `-----BEGIN SSH HOST KEY
/// KEYS-----` and `-----END SSH HOST KEY KEYS-----` on its serial console
/// (cloud-init and the stemcells; a line may carry a prefix such as a kernel
/// timestamp or `ec2:`). The one parser of the EC2 console output, the GCE
/// serial port and Azure's boot diagnostics log.
pub fn from_console(text: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("-----BEGIN SSH HOST KEY KEYS-----") {
            inside = true;
        } else if line.contains("-----END SSH HOST KEY KEYS-----") {
            inside = false;
        } else if inside {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = w
                .iter()
                .position(|x| x.starts_with("ssh-") || x.starts_with("ecdsa-"))
            {
                if let (Some(t), Some(k)) = (w.get(i), w.get(i + 1)) {
                    out.push(format!("{t} {k}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";

    #[test]
    fn pins_accept_keys_lines_and_fingerprints() {
        let k = format!("ssh-ed25519 {KEY}");
        assert_eq!(parse_pin(&format!("{k} root@vm")).unwrap(), k);
        assert_eq!(
            parse_pin(&format!("vm1,[127.0.0.1]:2222 {k} comment")).unwrap(),
            k
        );
        let fp = "SHA256:LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE";
        assert_eq!(parse_pin(fp).unwrap(), fp);
        let e = parse_pin("not-a-key").unwrap_err();
        assert!(e.contains("is not a host key"), "{e}");
        assert!(parse_pin("SHA256:abc").is_err());
        // The algorithm must match the blob.
        let e = parse_pin(&format!("ssh-rsa {KEY}")).unwrap_err();
        assert!(e.contains("ssh-ed25519 key, not ssh-rsa"), "{e}");
        assert!(parse_pin("ssh-ed25519 !!!").is_err());
        assert!(parse_pin(&format!("@revoked * ssh-ed25519 {KEY}")).is_err());
    }

    #[test]
    fn known_hosts_plain_port_and_hashed_entries() {
        // The hashed entry is `ssh-keygen -H` of `[127.0.0.1]:2222`.
        let salt = [7u8; 20];
        let hash = hmac_sha1(&salt, b"[127.0.0.1]:2222");
        let hashed = format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(hash));
        let text = format!(
            "# comment\nexample.org,10.0.0.* ssh-ed25519 {KEY}\n{hashed} ssh-ed25519 {KEY}\n@cert-authority *.x ssh-ed25519 {KEY}\n"
        );
        assert_eq!(check_known_hosts(&text).unwrap(), 2);
        assert_eq!(keys_for(&text, "example.org").unwrap().len(), 1);
        assert_eq!(keys_for(&text, "10.0.0.7").unwrap().len(), 1);
        assert_eq!(
            keys_for(&text, &host_name("127.0.0.1", 2222))
                .unwrap()
                .len(),
            1
        );
        assert!(keys_for(&text, "127.0.0.1").unwrap().is_empty());
        assert!(!hosts_match("*,!bad.org", "bad.org"));
        assert!(check_known_hosts("h ssh-ed25519 nope\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(check_known_hosts("# only\n").is_err());
    }

    #[test]
    fn hmac_sha1_matches_rfc2202() {
        let d = hmac_sha1(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(d), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }
}
