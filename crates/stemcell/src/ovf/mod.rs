//! OVF 1.0 descriptors and `.mf` digest files.
//!
//! [`Ovf`] reads a descriptor (the vSphere stemcell's `image.ovf`, or an
//! OVA's), gives typed access to files, disks, CPU and memory, edits them in
//! place and writes the document back with every other section untouched.
//! [`Ovf::new_appliance`] writes a fresh OVF 1.0 envelope for an OVA.
//!
//! A `.mf` file lists digests as `SHA1(file)= hex` or `SHA256(file)= hex`.
//! After any edit of an OVF the `.mf` must be rewritten:
//! [`edit_ovf_in_dir`] does both.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::xml::{local, Document, Element, Node, XmlError};

/// OVF 1.0 envelope namespace.
pub const NS_OVF: &str = "http://schemas.dmtf.org/ovf/envelope/1";
/// CIM resource allocation namespace.
pub const NS_RASD: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
/// CIM virtual system namespace.
pub const NS_VSSD: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
/// The disk format URL of a streamOptimized VMDK.
pub const VMDK_STREAM_OPTIMIZED: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// OVF and `.mf` errors.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    /// XML problem.
    #[error("OVF descriptor: {0}")]
    Xml(#[from] XmlError),
    /// The root is not an OVF `Envelope`, or a required section is missing.
    #[error("OVF descriptor: {0}")]
    Structure(String),
    /// A file or disk that was named does not exist in the descriptor.
    #[error("OVF descriptor has no {kind} {id:?}")]
    NotFound {
        /// `file` or `disk`.
        kind: &'static str,
        /// Its id or href.
        id: String,
    },
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A `.mf` line that is not `ALGO(file)= hex`.
    #[error("{path}:{line}: not a digest line: {text:?}")]
    MfSyntax {
        /// The `.mf`.
        path: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// The line.
        text: String,
    },
    /// A digest does not match.
    #[error("{file}: {algo} is {actual}, the manifest says {expected}")]
    DigestMismatch {
        /// The file.
        file: String,
        /// `SHA1` or `SHA256`.
        algo: &'static str,
        /// From the `.mf`.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// A `.mf` names a file outside its directory.
    #[error("{0:?} in a .mf is not a plain file name")]
    BadMfName(String),
}

/// A `References/File`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OvfFile {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`.
    pub href: String,
    /// `ovf:size`, when given.
    pub size: Option<u64>,
}

/// A `DiskSection/Disk`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OvfDisk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:fileRef`.
    pub file_ref: Option<String>,
    /// Capacity in bytes (`ovf:capacity` times `ovf:capacityAllocationUnits`).
    pub capacity_bytes: Option<u64>,
    /// `ovf:format`.
    pub format: Option<String>,
    /// `ovf:populatedSize`.
    pub populated_size: Option<u64>,
}

/// A `VirtualHardwareSection/Item`: its `rasd:` fields by local name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HardwareItem {
    /// `rasd:ResourceType` (3 CPU, 4 memory, 5 IDE, 6 SCSI, 10 NIC, 15 CD, 17 disk, 20 SATA).
    pub resource_type: Option<u32>,
    /// Every field.
    pub fields: BTreeMap<String, String>,
}

/// Multiplier of an allocation-units string (`byte * 2^20`, `MegaBytes`, ...).
pub fn allocation_units(units: &str) -> Option<u64> {
    let u = units.trim();
    match u.to_ascii_lowercase().as_str() {
        "" | "byte" | "bytes" => return Some(1),
        "kilobytes" => return Some(1 << 10),
        "megabytes" => return Some(1 << 20),
        "gigabytes" => return Some(1 << 30),
        _ => {}
    }
    let rest = u.strip_prefix("byte")?.trim().strip_prefix('*')?.trim();
    let exp = rest.strip_prefix("2^")?.trim().parse::<u32>().ok()?;
    1u64.checked_shl(exp)
}

/// Settings for a new appliance descriptor.
#[derive(Debug, Clone)]
pub struct ApplianceSpec {
    /// Virtual system name.
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk file name (the VMDK inside the OVA).
    pub disk_href: String,
    /// Disk file size in bytes.
    pub disk_file_size: u64,
    /// Disk capacity in bytes.
    pub disk_capacity: u64,
    /// OVF operating system id (CIM OS type: 94 Ubuntu 64-bit, 96 Debian 64-bit, 101 other Linux 64-bit).
    pub os_id: u32,
    /// OS description (e.g. `Ubuntu_64`).
    pub os_description: String,
    /// Network name the NIC connects to (e.g. `NAT`).
    pub network: String,
    /// Where the disk sits.
    pub bus: DiskBus,
}

/// The disk controller layout of a new appliance descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskBus {
    /// One LSI Logic SCSI controller holding the disk (what vSphere exports).
    #[default]
    Scsi,
    /// Two PIIX4 IDE controllers: the disk on the first, a CD-ROM (for the
    /// OVF environment) on the second (what VirtualBox exports).
    IdeWithCdrom,
}

/// An OVF descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovf {
    doc: Document,
}

fn text_of(e: &Element, name: &str) -> Option<String> {
    e.find(name).map(|c| c.text_content().trim().to_string())
}

impl Ovf {
    /// Parse a descriptor.
    pub fn parse(text: &str) -> Result<Self, OvfError> {
        let doc = Document::parse(text)?;
        if local(&doc.root.name) != "Envelope" {
            return Err(OvfError::Structure(format!(
                "root element is <{}>, not <Envelope>",
                doc.root.name
            )));
        }
        Ok(Ovf { doc })
    }

    /// Read a descriptor file.
    pub fn read(path: &Path) -> Result<Self, OvfError> {
        let text = std::fs::read_to_string(path).map_err(|source| OvfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The descriptor as XML text.
    pub fn to_xml(&self) -> String {
        self.doc.to_xml()
    }

    /// The root `Envelope`.
    pub fn envelope(&self) -> &Element {
        &self.doc.root
    }

    /// The root `Envelope`, mutable (for sections opsbake does not model).
    pub fn envelope_mut(&mut self) -> &mut Element {
        &mut self.doc.root
    }

    /// `References/File` entries.
    pub fn files(&self) -> Vec<OvfFile> {
        self.doc
            .root
            .find("References")
            .map(|r| {
                r.elements()
                    .filter(|e| local(&e.name) == "File")
                    .map(|e| OvfFile {
                        id: e.get_attr("id").unwrap_or_default().to_string(),
                        href: e.get_attr("href").unwrap_or_default().to_string(),
                        size: e.get_attr("size").and_then(|s| s.trim().parse().ok()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Set `ovf:size` of the file with this href.
    pub fn set_file_size(&mut self, href: &str, size: u64) -> Result<(), OvfError> {
        let refs = self
            .doc
            .root
            .find_mut("References")
            .ok_or_else(|| OvfError::Structure("no References section".into()))?;
        let f = refs
            .elements_mut()
            .find(|e| local(&e.name) == "File" && e.get_attr("href") == Some(href))
            .ok_or_else(|| OvfError::NotFound {
                kind: "file",
                id: href.to_string(),
            })?;
        f.set_attr("size", "ovf:size", size.to_string());
        Ok(())
    }

    /// `DiskSection/Disk` entries.
    pub fn disks(&self) -> Vec<OvfDisk> {
        self.doc
            .root
            .find("DiskSection")
            .map(|s| {
                s.elements()
                    .filter(|e| local(&e.name) == "Disk")
                    .map(|e| {
                        let units = e
                            .get_attr("capacityAllocationUnits")
                            .map_or(Some(1), allocation_units);
                        let cap = e
                            .get_attr("capacity")
                            .and_then(|c| c.trim().parse::<u64>().ok());
                        OvfDisk {
                            disk_id: e.get_attr("diskId").unwrap_or_default().to_string(),
                            file_ref: e.get_attr("fileRef").map(str::to_string),
                            capacity_bytes: cap.zip(units).and_then(|(c, u)| c.checked_mul(u)),
                            format: e.get_attr("format").map(str::to_string),
                            populated_size: e
                                .get_attr("populatedSize")
                                .and_then(|s| s.trim().parse().ok()),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Set a disk's capacity in bytes (units become bytes).
    pub fn set_disk_capacity(&mut self, disk_id: &str, bytes: u64) -> Result<(), OvfError> {
        let d = self.disk_mut(disk_id)?;
        d.set_attr("capacity", "ovf:capacity", bytes.to_string());
        d.attrs
            .retain(|(k, _)| local(k) != "capacityAllocationUnits");
        Ok(())
    }

    /// Set a disk's populated size (or remove it with `None`).
    pub fn set_disk_populated_size(
        &mut self,
        disk_id: &str,
        bytes: Option<u64>,
    ) -> Result<(), OvfError> {
        let d = self.disk_mut(disk_id)?;
        match bytes {
            Some(b) => d.set_attr("populatedSize", "ovf:populatedSize", b.to_string()),
            None => d.attrs.retain(|(k, _)| local(k) != "populatedSize"),
        }
        Ok(())
    }

    fn disk_mut(&mut self, disk_id: &str) -> Result<&mut Element, OvfError> {
        self.doc
            .root
            .find_mut("DiskSection")
            .and_then(|s| {
                s.elements_mut()
                    .find(|e| local(&e.name) == "Disk" && e.get_attr("diskId") == Some(disk_id))
            })
            .ok_or_else(|| OvfError::NotFound {
                kind: "disk",
                id: disk_id.to_string(),
            })
    }

    fn virtual_system(&self) -> Option<&Element> {
        self.doc.root.find("VirtualSystem")
    }

    fn virtual_system_mut(&mut self) -> Result<&mut Element, OvfError> {
        self.doc
            .root
            .find_mut("VirtualSystem")
            .ok_or_else(|| OvfError::Structure("no VirtualSystem".into()))
    }

    /// The virtual system's `Name` (or its `ovf:id`).
    pub fn name(&self) -> Option<String> {
        let vs = self.virtual_system()?;
        text_of(vs, "Name").or_else(|| vs.get_attr("id").map(str::to_string))
    }

    /// Set the virtual system's `ovf:id` and `Name`.
    pub fn set_name(&mut self, name: &str) -> Result<(), OvfError> {
        let vs = self.virtual_system_mut()?;
        vs.set_attr("id", "ovf:id", name);
        match vs.find_mut("Name") {
            Some(n) => n.set_text(name),
            None => {
                // Name follows Info.
                let pos = vs
                    .children
                    .iter()
                    .position(|n| matches!(n, Node::Element(e) if local(&e.name) == "Info"))
                    .map_or(0, |p| p + 1);
                vs.children
                    .insert(pos, Node::Element(Element::new("Name").text(name)));
            }
        }
        Ok(())
    }

    /// The hardware items.
    pub fn hardware(&self) -> Vec<HardwareItem> {
        self.virtual_system()
            .and_then(|vs| vs.find("VirtualHardwareSection"))
            .map(|hw| {
                hw.elements()
                    .filter(|e| local(&e.name) == "Item")
                    .map(|e| {
                        let fields: BTreeMap<String, String> = e
                            .elements()
                            .map(|f| {
                                (
                                    local(&f.name).to_string(),
                                    f.text_content().trim().to_string(),
                                )
                            })
                            .collect();
                        HardwareItem {
                            resource_type: fields.get("ResourceType").and_then(|t| t.parse().ok()),
                            fields,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn item_mut(&mut self, resource_type: u32) -> Result<&mut Element, OvfError> {
        let hw = self
            .virtual_system_mut()?
            .find_mut("VirtualHardwareSection")
            .ok_or_else(|| OvfError::Structure("no VirtualHardwareSection".into()))?;
        hw.elements_mut()
            .find(|e| {
                local(&e.name) == "Item"
                    && e.find("ResourceType")
                        .map(|t| t.text_content().trim() == resource_type.to_string())
                        .unwrap_or(false)
            })
            .ok_or_else(|| {
                OvfError::Structure(format!("no hardware item of ResourceType {resource_type}"))
            })
    }

    fn set_item_field(item: &mut Element, field: &str, value: &str) {
        match item.find_mut(field) {
            Some(f) => f.set_text(value),
            None => item.children.push(Node::Element(
                Element::new(&format!("rasd:{field}")).text(value),
            )),
        }
    }

    /// Number of virtual CPUs (item of ResourceType 3).
    pub fn cpus(&self) -> Option<u32> {
        self.hardware()
            .into_iter()
            .find(|i| i.resource_type == Some(3))
            .and_then(|i| i.fields.get("VirtualQuantity").and_then(|v| v.parse().ok()))
    }

    /// Set the number of virtual CPUs.
    pub fn set_cpus(&mut self, n: u32) -> Result<(), OvfError> {
        let item = self.item_mut(3)?;
        Self::set_item_field(item, "VirtualQuantity", &n.to_string());
        for f in ["ElementName", "Caption"] {
            if item.find(f).is_some() {
                Self::set_item_field(item, f, &format!("{n} virtual CPU"));
            }
        }
        Ok(())
    }

    /// Memory in MiB (item of ResourceType 4).
    pub fn memory_mib(&self) -> Option<u64> {
        let item = self
            .hardware()
            .into_iter()
            .find(|i| i.resource_type == Some(4))?;
        let q: u64 = item.fields.get("VirtualQuantity")?.parse().ok()?;
        let units = item
            .fields
            .get("AllocationUnits")
            .map_or(Some(1 << 20), |u| allocation_units(u))?;
        Some(q * units / (1 << 20))
    }

    /// Set the memory in MiB.
    pub fn set_memory_mib(&mut self, mib: u64) -> Result<(), OvfError> {
        let item = self.item_mut(4)?;
        Self::set_item_field(item, "AllocationUnits", "byte * 2^20");
        Self::set_item_field(item, "VirtualQuantity", &mib.to_string());
        for f in ["ElementName", "Caption"] {
            if item.find(f).is_some() {
                Self::set_item_field(item, f, &format!("{mib}MB of memory"));
            }
        }
        Ok(())
    }

    /// Insert a section into the virtual system before its first child
    /// element named `before` (local name), or at its end when there is none.
    pub fn insert_virtual_system_section(
        &mut self,
        before: &str,
        section: Element,
    ) -> Result<(), OvfError> {
        let vs = self.virtual_system_mut()?;
        let at = vs
            .children
            .iter()
            .position(|n| matches!(n, Node::Element(e) if local(&e.name) == before))
            .unwrap_or(vs.children.len());
        vs.children.insert(at, Node::Element(section));
        Ok(())
    }

    /// Append a section (e.g. VirtualBox's `vbox:Machine`) to the virtual system.
    pub fn add_virtual_system_section(&mut self, section: Element) -> Result<(), OvfError> {
        self.virtual_system_mut()?
            .children
            .push(Node::Element(section));
        Ok(())
    }

    /// A new OVF 1.0 envelope: one VM with CPUs, memory, a SCSI (LSI Logic)
    /// controller holding the disk, an E1000 NIC on `spec.network`.
    pub fn new_appliance(spec: &ApplianceSpec) -> Self {
        let info = |t: &str| Element::new("Info").text(t);
        let rasd = |n: &str, v: &str| Element::new(&format!("rasd:{n}")).text(v);
        let item = |fields: &[(&str, &str)]| {
            fields
                .iter()
                .fold(Element::new("Item"), |e, (n, v)| e.child(rasd(n, v)))
        };
        let cpus = spec.cpus.to_string();
        let mem = spec.memory_mib.to_string();
        let cpu_name = format!("{} virtual CPU", spec.cpus);
        let mem_name = format!("{}MB of memory", spec.memory_mib);
        let nic_name = format!("Ethernet adapter on '{}'", spec.network);
        let disk = |id: &'static str, parent: &'static str| {
            vec![
                ("AddressOnParent", "0"),
                ("Caption", "disk1"),
                ("Description", "Disk Image"),
                ("ElementName", "disk1"),
                ("HostResource", "/disk/vmdisk1"),
                ("InstanceID", id),
                ("Parent", parent),
                ("ResourceType", "17"),
            ]
        };
        let ide = |n: &'static str, id: &'static str, name: &'static str| {
            vec![
                ("Address", n),
                ("Caption", name),
                ("Description", "IDE Controller"),
                ("ElementName", name),
                ("InstanceID", id),
                ("ResourceSubType", "PIIX4"),
                ("ResourceType", "5"),
            ]
        };
        let nic = |id: &'static str| {
            vec![
                ("AutomaticAllocation", "true"),
                ("Caption", nic_name.as_str()),
                ("Connection", spec.network.as_str()),
                ("ElementName", nic_name.as_str()),
                ("InstanceID", id),
                ("ResourceSubType", "E1000"),
                ("ResourceType", "10"),
            ]
        };
        let controllers: Vec<Vec<(&str, &str)>> = match spec.bus {
            DiskBus::Scsi => vec![
                vec![
                    ("Caption", "scsiController0"),
                    ("Description", "SCSI Controller"),
                    ("ElementName", "scsiController0"),
                    ("InstanceID", "3"),
                    ("ResourceSubType", "lsilogic"),
                    ("ResourceType", "6"),
                ],
                disk("4", "3"),
                nic("5"),
            ],
            DiskBus::IdeWithCdrom => vec![
                ide("0", "3", "ideController0"),
                ide("1", "4", "ideController1"),
                disk("5", "3"),
                vec![
                    ("AddressOnParent", "0"),
                    ("AutomaticAllocation", "true"),
                    ("Caption", "cdrom1"),
                    ("Description", "CD-ROM Drive (the OVF environment)"),
                    ("ElementName", "cdrom1"),
                    ("InstanceID", "6"),
                    ("Parent", "4"),
                    ("ResourceType", "15"),
                ],
                nic("7"),
            ],
        };
        let root = Element::new("Envelope")
            .attr("ovf:version", "1.0")
            .attr("xml:lang", "en-US")
            .attr("xmlns", NS_OVF)
            .attr("xmlns:ovf", NS_OVF)
            .attr("xmlns:rasd", NS_RASD)
            .attr("xmlns:vssd", NS_VSSD)
            .attr("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance")
            .child(
                Element::new("References").child(
                    Element::new("File")
                        .attr("ovf:href", &spec.disk_href)
                        .attr("ovf:id", "file1")
                        .attr("ovf:size", spec.disk_file_size.to_string()),
                ),
            )
            .child(
                Element::new("DiskSection")
                    .child(info("List of the virtual disks used in the package"))
                    .child(
                        Element::new("Disk")
                            .attr("ovf:capacity", spec.disk_capacity.to_string())
                            .attr("ovf:capacityAllocationUnits", "byte")
                            .attr("ovf:diskId", "vmdisk1")
                            .attr("ovf:fileRef", "file1")
                            .attr("ovf:format", VMDK_STREAM_OPTIMIZED),
                    ),
            )
            .child(
                Element::new("NetworkSection")
                    .child(info("Logical networks used in the package"))
                    .child(
                        Element::new("Network")
                            .attr("ovf:name", &spec.network)
                            .child(
                                Element::new("Description")
                                    .text("Logical network used by this appliance."),
                            ),
                    ),
            )
            .child(
                Element::new("VirtualSystem")
                    .attr("ovf:id", &spec.name)
                    .child(info("A virtual machine"))
                    .child(Element::new("Name").text(&spec.name))
                    .child(
                        Element::new("OperatingSystemSection")
                            .attr("ovf:id", spec.os_id.to_string())
                            .child(info("The kind of installed guest operating system"))
                            .child(Element::new("Description").text(&spec.os_description)),
                    )
                    .child(
                        controllers.iter().fold(
                            Element::new("VirtualHardwareSection")
                                .child(info("Virtual hardware requirements for a virtual machine"))
                                .child(
                                    Element::new("System")
                                        .child(
                                            Element::new("vssd:ElementName")
                                                .text("Virtual Hardware Family"),
                                        )
                                        .child(Element::new("vssd:InstanceID").text("0"))
                                        .child(
                                            Element::new("vssd:VirtualSystemIdentifier")
                                                .text(&spec.name),
                                        )
                                        .child(
                                            Element::new("vssd:VirtualSystemType").text("vmx-13"),
                                        ),
                                )
                                .child(item(&[
                                    ("Caption", &cpu_name),
                                    ("Description", "Number of virtual CPUs"),
                                    ("ElementName", &cpu_name),
                                    ("InstanceID", "1"),
                                    ("ResourceType", "3"),
                                    ("VirtualQuantity", &cpus),
                                ]))
                                .child(item(&[
                                    ("AllocationUnits", "byte * 2^20"),
                                    ("Caption", &mem_name),
                                    ("Description", "Memory Size"),
                                    ("ElementName", &mem_name),
                                    ("InstanceID", "2"),
                                    ("ResourceType", "4"),
                                    ("VirtualQuantity", &mem),
                                ])),
                            |e, f| e.child(item(f)),
                        ),
                    ),
            );
        Ovf {
            doc: Document {
                prolog: vec![
                    Node::Raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>".into()),
                    Node::Text("\n".into()),
                ],
                root,
                epilog: vec![Node::Text("\n".into())],
            },
        }
    }
}

mod env;
mod mf;

pub use env::{environment_xml, parse_environment, NS_OVF_ENV};
pub use mf::{
    digest_file, edit_ovf_in_dir, format_mf, parse_mf, refresh_mf, verify_mf, write_mf, DigestAlgo,
    MfEntry,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovf_environment_round_trips_with_awkward_values() {
        let mut p = BTreeMap::new();
        p.insert(
            "public_ssh_key".to_string(),
            "ssh-ed25519 AAAA a&b <c> \"q\"".to_string(),
        );
        p.insert("hostname".to_string(), "appliance".to_string());
        let xml = environment_xml("vm-1", &p);
        assert!(xml.starts_with("<?xml"));
        assert_eq!(parse_environment(&xml).unwrap(), p);
        assert!(parse_environment("<Envelope/>").is_err());
    }

    #[test]
    fn allocation_units_parse() {
        assert_eq!(allocation_units("byte * 2^20"), Some(1 << 20));
        assert_eq!(allocation_units("byte*2^30"), Some(1 << 30));
        assert_eq!(allocation_units("MegaBytes"), Some(1 << 20));
        assert_eq!(allocation_units("byte"), Some(1));
        assert_eq!(allocation_units("furlongs"), None);
    }

    #[test]
    fn mf_lines_parse_and_format() {
        let text = "SHA1(image.ovf)= 0123456789abcdef0123456789abcdef01234567\nSHA256(image-disk1.vmdk)= 0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\n";
        let e = parse_mf(text, Path::new("x.mf")).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].algo, DigestAlgo::Sha256);
        assert_eq!(e[1].file, "image-disk1.vmdk");
        assert_eq!(format_mf(&e), text.replace("ABCDEF", "abcdef"));
        assert!(parse_mf("MD5(x)= 00\n", Path::new("x.mf")).is_err());
        assert!(parse_mf("SHA1(x)= 00\n", Path::new("x.mf")).is_err());
    }

    #[test]
    fn new_appliance_reads_back() {
        let spec = ApplianceSpec {
            name: "appliance".into(),
            cpus: 2,
            memory_mib: 4096,
            disk_href: "appliance-disk1.vmdk".into(),
            disk_file_size: 12345,
            disk_capacity: 10 << 30,
            os_id: 94,
            os_description: "Ubuntu_64".into(),
            network: "NAT".into(),
            bus: DiskBus::Scsi,
        };
        let ovf = Ovf::new_appliance(&spec);
        let back = Ovf::parse(&ovf.to_xml()).unwrap();
        assert_eq!(back.name().as_deref(), Some("appliance"));
        assert_eq!(back.cpus(), Some(2));
        assert_eq!(back.memory_mib(), Some(4096));
        assert_eq!(back.files()[0].size, Some(12345));
        assert_eq!(back.disks()[0].capacity_bytes, Some(10 << 30));
        assert_eq!(
            back.disks()[0].format.as_deref(),
            Some(VMDK_STREAM_OPTIMIZED)
        );
    }
}
