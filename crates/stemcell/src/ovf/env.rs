//! OVF environment documents (`ovf-env.xml`).

use std::collections::BTreeMap;

use super::OvfError;
use crate::xml::{local, Document, Element, Node};

/// OVF environment namespace (`ovf-env.xml`).
pub const NS_OVF_ENV: &str = "http://schemas.dmtf.org/ovf/environment/1";

/// An OVF environment document (`ovf-env.xml`, what vSphere hands a VM on a
/// CD-ROM or through guestinfo): `oe:id` and the properties, sorted by key.
pub fn environment_xml(id: &str, properties: &BTreeMap<String, String>) -> String {
    let mut section = Element::new("PropertySection");
    for (k, v) in properties {
        section = section.child(
            Element::new("Property")
                .attr("oe:key", k)
                .attr("oe:value", v),
        );
    }
    let root = Element::new("Environment")
        .attr("xmlns", NS_OVF_ENV)
        .attr("xmlns:oe", NS_OVF_ENV)
        .attr("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance")
        .attr("oe:id", id)
        .child(Element::new("PlatformSection").child(Element::new("Kind").text("opsbake")))
        .child(section);
    Document {
        prolog: vec![
            Node::Raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>".into()),
            Node::Text("\n".into()),
        ],
        root,
        epilog: vec![Node::Text("\n".into())],
    }
    .to_xml()
}

/// The properties of an OVF environment document.
pub fn parse_environment(text: &str) -> Result<BTreeMap<String, String>, OvfError> {
    let doc = Document::parse(text)?;
    if local(&doc.root.name) != "Environment" {
        return Err(OvfError::Structure(format!(
            "root element is <{}>, not <Environment>",
            doc.root.name
        )));
    }
    Ok(doc
        .root
        .find("PropertySection")
        .map(|s| {
            s.elements()
                .filter(|e| local(&e.name) == "Property")
                .filter_map(|e| {
                    Some((
                        e.get_attr("key")?.to_string(),
                        e.get_attr("value").unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}
