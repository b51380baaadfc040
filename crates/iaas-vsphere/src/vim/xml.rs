//! The XML side of vim25 SOAP: a small element tree read with quick-xml,
//! written back verbatim (names with their prefixes, `xsi:type` kept), and
//! escaping for the requests this crate writes.
//!
//! vim25 is polymorphic (`xsi:type` on nearly every complex value) and
//! order-sensitive (schema sequences): a tree that keeps both lets a
//! returned object (an `ImportSpec`, a device) be edited and sent back as the
//! server wrote it, which a fixed set of serde structs could not do without
//! modelling the whole schema.

use quick_xml::events::Event;
use quick_xml::Reader;

/// One element: its local name (prefix dropped), its attributes as written,
/// its text and its children in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Local name (`returnval`, `propSet`).
    pub name: String,
    /// Attributes as written (`xsi:type`, `type`).
    pub attrs: Vec<(String, String)>,
    /// Text content (unescaped).
    pub text: String,
    /// Child elements.
    pub children: Vec<Node>,
}

fn local(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    match s.rsplit_once(':') {
        Some((_, l)) => l.to_string(),
        None => s.into_owned(),
    }
}

impl Node {
    /// A new element with text.
    pub fn text_node(name: &str, text: impl Into<String>) -> Node {
        Node {
            name: name.to_string(),
            text: text.into(),
            ..Node::default()
        }
    }

    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The first child with this local name, mutable.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.children.iter_mut().find(|c| c.name == name)
    }

    /// Every child with this local name.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child with this name.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// Follow a path of child names (`info.state`).
    pub fn path(&self, path: &str) -> Option<&Node> {
        path.split('.')
            .try_fold(self, |n, p| if p.is_empty() { Some(n) } else { n.child(p) })
    }

    /// An attribute: the unprefixed one first (a reference's `type`, never
    /// its `xsi:type`), else by local name (`name` finds `ovf:name`).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .or_else(|| {
                self.attrs
                    .iter()
                    .find(|(k, _)| k.rsplit_once(':').is_some_and(|(_, l)| l == name))
            })
            .map(|(_, v)| v.as_str())
    }

    /// The `xsi:type` without a prefix (`VirtualDisk`, `string`).
    pub fn xsi_type(&self) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == "xsi:type" || k.ends_with(":type"))
            .map(|(_, v)| v.rsplit_once(':').map_or(v.as_str(), |(_, l)| l))
    }

    /// Set the text of the first child `name`, adding it at the end if
    /// missing.
    pub fn set_text(&mut self, name: &str, text: impl Into<String>) {
        match self.child_mut(name) {
            Some(c) => c.text = text.into(),
            None => self.children.push(Node::text_node(name, text)),
        }
    }

    /// Every descendant (depth first) with this local name.
    pub fn descendants<'a>(&'a self, name: &str, out: &mut Vec<&'a Node>) {
        for c in &self.children {
            if c.name == name {
                out.push(c);
            }
            c.descendants(name, out);
        }
    }

    /// Write this element back as `<tag ...>` (its attributes verbatim; the
    /// envelope declares the `xsi` and `xsd` prefixes).
    pub fn write_as(&self, tag: &str, out: &mut String) {
        out.push('<');
        out.push_str(tag);
        for (k, v) in &self.attrs {
            if k.starts_with("xmlns") {
                continue;
            }
            out.push(' ');
            // vcsim writes `XMLSchema-instance:type` with a prefix of its
            // own: the envelope declares `xsi`
            match k.rsplit_once(':') {
                Some((_, "type")) => out.push_str("xsi:type"),
                _ => out.push_str(k),
            }
            out.push_str("=\"");
            out.push_str(&esc(v));
            out.push('"');
        }
        out.push('>');
        out.push_str(&esc(&self.text));
        for c in &self.children {
            c.write_as(&c.name, out);
        }
        out.push_str("</");
        out.push_str(tag);
        out.push('>');
    }

    /// This element as XML under its own name.
    pub fn to_xml(&self) -> String {
        let mut s = String::new();
        self.write_as(&self.name, &mut s);
        s
    }
}

/// Escape text and attribute values.
pub fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// `<tag>text</tag>`, escaped.
pub fn el(tag: &str, text: &str) -> String {
    format!("<{tag}>{}</{tag}>", esc(text))
}

/// A managed object reference: `<tag type="Kind">value</tag>`.
pub fn moref_el(tag: &str, m: &super::MoRef) -> String {
    format!("<{tag} type=\"{}\">{}</{tag}>", esc(&m.kind), esc(&m.value))
}

/// Parse a document into its root element.
pub fn parse(xml: &str) -> Result<Node, String> {
    let mut r = Reader::from_str(xml);
    r.config_mut().trim_text(false);
    let mut stack: Vec<Node> = vec![Node::default()];
    let attrs_of = |e: &quick_xml::events::BytesStart| -> Result<Vec<(String, String)>, String> {
        let mut v = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|x| x.to_string())?;
            let val = a.unescape_value().map_err(|x| x.to_string())?;
            v.push((
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                val.into_owned(),
            ));
        }
        Ok(v)
    };
    loop {
        match r.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => stack.push(Node {
                name: local(e.name().as_ref()),
                attrs: attrs_of(&e)?,
                ..Node::default()
            }),
            Event::Empty(e) => {
                let n = Node {
                    name: local(e.name().as_ref()),
                    attrs: attrs_of(&e)?,
                    ..Node::default()
                };
                match stack.last_mut() {
                    Some(top) => top.children.push(n),
                    None => return Err("element outside the document".into()),
                }
            }
            Event::End(_) => {
                let mut n = stack.pop().ok_or("unbalanced end tag")?;
                if !n.children.is_empty() && n.text.trim().is_empty() {
                    n.text.clear();
                }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_keeps_types_and_order() {
        let x = r#"<returnval xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><importSpec xsi:type="VirtualMachineImportSpec"><configSpec><name>a &amp; b</name><numCPUs>1</numCPUs></configSpec></importSpec></returnval>"#;
        let n = parse(x).unwrap();
        let s = n.child("importSpec").unwrap();
        assert_eq!(s.xsi_type(), Some("VirtualMachineImportSpec"));
        assert_eq!(n.path("importSpec.configSpec.name").unwrap().text, "a & b");
        assert_eq!(
            s.to_xml(),
            r#"<importSpec xsi:type="VirtualMachineImportSpec"><configSpec><name>a &amp; b</name><numCPUs>1</numCPUs></configSpec></importSpec>"#
        );
        assert!(parse("<a><b></a>").is_err());
        let v = parse(r#"<d xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="VirtualDisk"><k>1</k></d>"#).unwrap();
        assert_eq!(v.to_xml(), r#"<d xsi:type="VirtualDisk"><k>1</k></d>"#);
        // a property value that is a reference: its kind is `type`, not `xsi:type`
        let r = parse(r#"<val xmlns:X="i" X:type="ManagedObjectReference" type="ResourcePool">resgroup-26</val>"#).unwrap();
        let m = crate::vim::MoRef::from_node(&r).unwrap();
        assert_eq!(
            (m.kind.as_str(), m.value.as_str()),
            ("ResourcePool", "resgroup-26")
        );
    }
}
