//! Checking an import against the OVA it came from: the descriptor read
//! with a small parser of its own (not opsbake's), what it declares, and
//! what vcsim made of it.

use super::*;

/// The `.ovf` member of an OVA (the first one).
pub fn read_ova_descriptor(ova: &Path) -> Result<String, VcsimError> {
    let err = |message: String| VcsimError::Ova {
        path: ova.to_path_buf(),
        message,
    };
    let f = std::fs::File::open(ova).map_err(|e| err(e.to_string()))?;
    let mut a = tar::Archive::new(f);
    for entry in a.entries().map_err(|e| err(e.to_string()))? {
        let mut entry = entry.map_err(|e| err(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| err(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".ovf") {
            let mut s = String::new();
            entry
                .read_to_string(&mut s)
                .map_err(|e| err(format!("{name}: {e}")))?;
            return Ok(s);
        }
    }
    Err(err("no .ovf member".into()))
}

/// A parsed XML element, names without their namespace prefix.
#[derive(Debug, Default)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == local)
            .map(|(_, v)| v.as_str())
    }

    fn child(&self, local: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == local)
    }

    fn children<'a>(&'a self, local: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == local)
    }

    fn child_text(&self, local: &str) -> Option<String> {
        self.child(local).map(|c| c.text.trim().to_string())
    }

    fn descendants<'a>(&'a self, local: &'a str, out: &mut Vec<&'a Node>) {
        for c in &self.children {
            if c.name == local {
                out.push(c);
            }
            c.descendants(local, out);
        }
    }
}

fn local(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    s.rsplit(':').next().unwrap_or(&s).to_string()
}

fn parse_xml(text: &str) -> Result<Node, String> {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Node> = vec![Node::default()];
    let start = |s: &quick_xml::events::BytesStart<'_>| -> Result<Node, String> {
        let mut n = Node {
            name: local(s.name().as_ref()),
            ..Node::default()
        };
        for a in s.attributes() {
            let a = a.map_err(|e| e.to_string())?;
            let v = a.unescape_value().map_err(|e| e.to_string())?;
            n.attrs.push((local(a.key.as_ref()), v.into_owned()));
        }
        Ok(n)
    };
    loop {
        match r.read_event().map_err(|e| e.to_string())? {
            Event::Start(s) => stack.push(start(&s)?),
            Event::Empty(s) => {
                let n = start(&s)?;
                if let Some(top) = stack.last_mut() {
                    top.children.push(n);
                }
            }
            Event::End(_) => {
                let n = stack.pop().ok_or("unbalanced end tag")?;
                match stack.last_mut() {
                    Some(top) => top.children.push(n),
                    None => return Err("unbalanced end tag".into()),
                }
            }
            Event::Text(t) => {
                let t = t.unescape().map_err(|e| e.to_string())?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err("an element is never closed".into());
    }
    stack
        .pop()
        .and_then(|d| d.children.into_iter().next())
        .ok_or_else(|| "no root element".into())
}

/// `byte * 2^20` and the like: the multiplier in bytes.
pub fn allocation_units(units: &str) -> Option<u64> {
    let u: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let rest = u.strip_prefix("byte")?;
    if rest.is_empty() {
        return Some(1);
    }
    let f = rest.strip_prefix('*')?;
    match f.split_once('^') {
        Some((b, e)) => b.parse::<u64>().ok()?.checked_pow(e.parse().ok()?),
        None => f.parse().ok(),
    }
}

/// The `CapacityInKB` vcsim 0.24 gives a disk (`ovfDiskCapacity`): the
/// number without units as is (a simulator bug: the OVF default unit is the
/// byte), else `capacity * units / 1024` when the units read as
/// `byte * B^E` or `byte`.
pub fn vcsim_capacity_kb(capacity: u64, units: Option<&str>) -> Option<u64> {
    let Some(u) = units else {
        return Some(capacity);
    };
    let f: Vec<&str> = u.split_whitespace().collect();
    let mult = if f.len() == 3 && f[0] == "byte" && f[1] == "*" {
        allocation_units(u)?
    } else {
        1
    };
    Some(capacity.checked_mul(mult)? / 1024)
}

/// What an OVF descriptor declares (first VirtualSystem, first
/// VirtualHardwareSection).
pub fn declared_from_ovf(xml: &str) -> Result<OvfDeclared, String> {
    let root = parse_xml(xml)?;
    if root.name != "Envelope" {
        return Err(format!("root element is <{}>, not <Envelope>", root.name));
    }
    let mut disks: BTreeMap<String, (u64, Option<String>)> = BTreeMap::new();
    if let Some(ds) = root.child("DiskSection") {
        for d in ds.children("Disk") {
            let id = d.attr("diskId").unwrap_or_default().to_string();
            let cap = d
                .attr("capacity")
                .ok_or_else(|| format!("disk {id} has no ovf:capacity"))?;
            let cap: u64 = cap
                .trim()
                .parse()
                .map_err(|_| format!("disk {id}: ovf:capacity {cap:?} is not a number"))?;
            disks.insert(
                id,
                (cap, d.attr("capacityAllocationUnits").map(str::to_string)),
            );
        }
    }
    let vs = root
        .child("VirtualSystem")
        .ok_or("no VirtualSystem (a VirtualSystemCollection is not handled)")?;
    let mut out = OvfDeclared::default();
    let mut props = Vec::new();
    vs.descendants("Property", &mut props);
    out.properties = props
        .iter()
        .filter_map(|p| p.attr("key").map(str::to_string))
        .collect();
    let hw = vs
        .child("VirtualHardwareSection")
        .ok_or("no VirtualHardwareSection")?;
    out.hardware_family = hw
        .child("System")
        .and_then(|s| s.child_text("VirtualSystemType"));
    for item in hw.children("Item") {
        let rt = item.child_text("ResourceType").unwrap_or_default();
        let qty = item
            .child_text("VirtualQuantity")
            .and_then(|q| q.parse::<u64>().ok());
        match rt.as_str() {
            "3" => out.cpus = qty.and_then(|q| u32::try_from(q).ok()),
            "4" => {
                let units = item
                    .child_text("AllocationUnits")
                    .unwrap_or_else(|| "byte * 2^20".into());
                let mult = allocation_units(&units)
                    .ok_or_else(|| format!("memory AllocationUnits {units:?}"))?;
                out.memory_mib = qty.and_then(|q| q.checked_mul(mult)).map(|b| b >> 20);
            }
            "10" => out.nics.push(DeclaredNic {
                subtype: item.child_text("ResourceSubType"),
                connection: item.child_text("Connection"),
            }),
            "15" | "16" => out.cdroms += 1,
            "17" => {
                let host = item.child_text("HostResource").unwrap_or_default();
                let (id, (cap, units)) = disks
                    .iter()
                    .find(|(id, _)| host.ends_with(&format!("/{id}")))
                    .ok_or_else(|| format!("disk item refers to {host:?}, not in DiskSection"))?;
                out.disks.push(DeclaredDisk {
                    disk_id: id.clone(),
                    capacity: *cap,
                    units: units.clone(),
                    capacity_bytes: match units {
                        None => Some(*cap),
                        Some(u) => allocation_units(u).and_then(|m| cap.checked_mul(m)),
                    },
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

pub(super) fn check_against_ovf(vm: &ImportedVm, ova: &Path) -> Result<(), VcsimError> {
    let d = &vm.declared;
    let mismatch = |what: &str, declared: String, found: String| VcsimError::Mismatch {
        vm: vm.name.clone(),
        ova: ova.to_path_buf(),
        what: what.to_string(),
        declared,
        found,
    };
    if let Some(c) = d.cpus {
        if c != vm.cpus {
            return Err(mismatch("vCPUs", c.to_string(), vm.cpus.to_string()));
        }
    }
    if let Some(m) = d.memory_mib {
        if m != vm.memory_mib {
            return Err(mismatch(
                "memory MiB",
                m.to_string(),
                vm.memory_mib.to_string(),
            ));
        }
    }
    if d.disks.len() != vm.disks.len() {
        return Err(mismatch(
            "disk count",
            d.disks.len().to_string(),
            vm.disks.len().to_string(),
        ));
    }
    for (i, (dd, vd)) in d.disks.iter().zip(&vm.disks).enumerate() {
        let want = vcsim_capacity_kb(dd.capacity, dd.units.as_deref());
        if want.and_then(|w| i64::try_from(w).ok()) != Some(vd.capacity_kb) {
            let mut declared = format!("ovf:capacity={}", dd.capacity);
            if let Some(u) = &dd.units {
                let _ = write!(declared, " units {u:?}");
            }
            let _ = write!(declared, " (vcsim reads {want:?} KiB)");
            return Err(mismatch(
                &format!("disk {i} ({}) capacity", dd.disk_id),
                declared,
                format!("{} KiB", vd.capacity_kb),
            ));
        }
    }
    if d.nics.len() != vm.nics.len() {
        return Err(mismatch(
            "NIC count",
            d.nics.len().to_string(),
            vm.nics.len().to_string(),
        ));
    }
    for (i, (dn, vn)) in d.nics.iter().zip(&vm.nics).enumerate() {
        if let Some(sub) = &dn.subtype {
            let want = format!("virtual{}", sub.to_ascii_lowercase());
            if vn.kind.to_ascii_lowercase() != want {
                return Err(mismatch(
                    &format!("NIC {i} type"),
                    sub.clone(),
                    vn.kind.clone(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_vcsim_capacity() {
        assert_eq!(allocation_units("byte"), Some(1));
        assert_eq!(allocation_units("byte * 2^20"), Some(1 << 20));
        assert_eq!(allocation_units("byte*1024"), Some(1024));
        assert_eq!(allocation_units("MegaBytes"), None);
        assert_eq!(vcsim_capacity_kb(8 << 20, None), Some(8 << 20));
        assert_eq!(vcsim_capacity_kb(8 << 20, Some("byte")), Some(8 << 10));
        assert_eq!(vcsim_capacity_kb(8, Some("byte * 2^20")), Some(8 << 10));
    }

    #[test]
    fn descriptor_declarations() {
        let xml = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="r" xmlns:vssd="v">
 <DiskSection><Disk ovf:diskId="d1" ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^30"/></DiskSection>
 <VirtualSystem ovf:id="x">
  <ProductSection><Property ovf:key="public_ssh_key" ovf:type="string"/></ProductSection>
  <VirtualHardwareSection>
   <System><vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
   <Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
   <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
   <Item><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>
   <Item><rasd:Connection>VM Network</rasd:Connection><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
   <Item><rasd:ResourceType>15</rasd:ResourceType></Item>
  </VirtualHardwareSection>
 </VirtualSystem>
</Envelope>"#;
        let d = declared_from_ovf(xml).unwrap();
        assert_eq!(d.hardware_family.as_deref(), Some("vmx-13"));
        assert_eq!(d.cpus, Some(2));
        assert_eq!(d.memory_mib, Some(2048));
        assert_eq!(d.disks.len(), 1);
        assert_eq!(d.disks[0].capacity_bytes, Some(4 << 30));
        assert_eq!(d.nics[0].subtype.as_deref(), Some("VmxNet3"));
        assert_eq!(d.cdroms, 1);
        assert_eq!(d.properties, vec!["public_ssh_key".to_string()]);
        assert!(declared_from_ovf("<a><b></a>").is_err());
        assert!(declared_from_ovf("<Other/>").is_err());
    }

    #[test]
    fn the_check_names_what_differs() {
        let declared = OvfDeclared {
            hardware_family: Some("vmx-13".into()),
            cpus: Some(2),
            memory_mib: Some(1536),
            disks: vec![DeclaredDisk {
                disk_id: "vmdisk1".into(),
                capacity: 8 << 20,
                units: None,
                capacity_bytes: Some(8 << 20),
            }],
            nics: vec![DeclaredNic {
                subtype: Some("E1000".into()),
                connection: Some("NAT".into()),
            }],
            cdroms: 1,
            properties: vec![],
        };
        let good = ImportedVm {
            name: "x".into(),
            path: "/DC0/vm/x".into(),
            cpus: 2,
            memory_mib: 1536,
            guest_id: "otherGuest".into(),
            hardware_version: "vmx-13".into(),
            disks: vec![VmDisk {
                label: "disk1".into(),
                capacity_kb: 8 << 20,
                file: "[LocalDS_0] x/disk-0.vmdk".into(),
            }],
            nics: vec![VmNic {
                kind: "VirtualE1000".into(),
                network: "VM Network".into(),
                mac: "00:0c:29:00:00:01".into(),
            }],
            cdroms: 1,
            extra_config: BTreeMap::new(),
            declared,
            import_output: String::new(),
        };
        let ova = Path::new("x.ova");
        check_against_ovf(&good, ova).unwrap();
        let what = |vm: &ImportedVm| match check_against_ovf(vm, ova) {
            Err(VcsimError::Mismatch { what, .. }) => what,
            other => panic!("{other:?}"),
        };
        let mut vm = good.clone();
        vm.cpus = 1;
        assert_eq!(what(&vm), "vCPUs");
        let mut vm = good.clone();
        vm.memory_mib = 1024;
        assert_eq!(what(&vm), "memory MiB");
        let mut vm = good.clone();
        vm.disks[0].capacity_kb = 8 << 10;
        assert_eq!(what(&vm), "disk 0 (vmdisk1) capacity");
        let mut vm = good.clone();
        vm.disks.clear();
        assert_eq!(what(&vm), "disk count");
        let mut vm = good.clone();
        vm.nics[0].kind = "VirtualVmxnet3".into();
        assert_eq!(what(&vm), "NIC 0 type");
    }
}
