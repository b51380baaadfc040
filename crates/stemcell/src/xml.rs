//! A small XML tree on quick-xml: enough to read an OVF descriptor, edit a
//! few elements and write it back with everything else (namespaces,
//! prefixes, comments, whitespace, unknown sections) unchanged.

use quick_xml::events::Event;
use quick_xml::Reader;

/// XML errors.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed.
    #[error("XML is not well-formed at byte {position}: {detail}")]
    Syntax {
        /// Byte offset.
        position: u64,
        /// What quick-xml said.
        detail: String,
    },
    /// An end tag does not match.
    #[error("XML end tag </{found}> does not close <{expected}>")]
    Mismatch {
        /// Open element.
        expected: String,
        /// End tag found.
        found: String,
    },
    /// No root element.
    #[error("XML document has no root element")]
    NoRoot,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// An element.
    Element(Element),
    /// Text (unescaped).
    Text(String),
    /// CDATA.
    CData(String),
    /// A comment.
    Comment(String),
    /// Declaration, processing instruction or doctype, kept verbatim (with its delimiters).
    Raw(String),
}

/// An element: qualified name as written (`ovf:Disk`), attributes in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Qualified name.
    pub name: String,
    /// Attributes (qualified name, unescaped value), in document order.
    pub attrs: Vec<(String, String)>,
    /// Children.
    pub children: Vec<Node>,
}

/// The part after the prefix.
pub fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

impl Element {
    /// A new element without attributes.
    pub fn new(name: &str) -> Self {
        Element {
            name: name.to_string(),
            ..Element::default()
        }
    }

    /// Builder: add an attribute.
    pub fn attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.attrs.push((name.to_string(), value.into()));
        self
    }

    /// Builder: add a child element.
    pub fn child(mut self, e: Element) -> Self {
        self.children.push(Node::Element(e));
        self
    }

    /// Builder: add text.
    pub fn text(mut self, t: impl Into<String>) -> Self {
        self.children.push(Node::Text(t.into()));
        self
    }

    /// The value of the attribute with this local name (any prefix).
    pub fn get_attr(&self, local_name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| local(k) == local_name)
            .map(|(_, v)| v.as_str())
    }

    /// Set the attribute with this local name, keeping its prefix; add it as
    /// `qualified` when absent.
    pub fn set_attr(&mut self, local_name: &str, qualified: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| local(k) == local_name) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((qualified.to_string(), value)),
        }
    }

    /// Child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// Child elements, mutable.
    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// First child element with this local name.
    pub fn find(&self, local_name: &str) -> Option<&Element> {
        self.elements().find(|e| local(&e.name) == local_name)
    }

    /// First child element with this local name, mutable.
    pub fn find_mut(&mut self, local_name: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| local(&e.name) == local_name)
    }

    /// The concatenated text of this element's direct text children.
    pub fn text_content(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) | Node::CData(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Replace the text content.
    pub fn set_text(&mut self, t: impl Into<String>) {
        self.children
            .retain(|n| !matches!(n, Node::Text(_) | Node::CData(_)));
        self.children.insert(0, Node::Text(t.into()));
    }

    fn write(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(&escape(v, true));
            out.push('"');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for c in &self.children {
            c.write(out);
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

impl Node {
    fn write(&self, out: &mut String) {
        match self {
            Node::Element(e) => e.write(out),
            Node::Text(t) => out.push_str(&escape(t, false)),
            Node::CData(t) => {
                out.push_str("<![CDATA[");
                out.push_str(t);
                out.push_str("]]>");
            }
            Node::Comment(t) => {
                out.push_str("<!--");
                out.push_str(t);
                out.push_str("-->");
            }
            Node::Raw(t) => out.push_str(t),
        }
    }
}

fn escape(s: &str, attr: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' if attr => o.push_str("&quot;"),
            '\n' if attr => o.push_str("&#10;"),
            c => o.push(c),
        }
    }
    o
}

/// A document: what precedes the root, the root, what follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Declaration, comments, whitespace before the root.
    pub prolog: Vec<Node>,
    /// The root element.
    pub root: Element,
    /// Anything after the root.
    pub epilog: Vec<Node>,
}

impl Document {
    /// Parse text.
    pub fn parse(text: &str) -> Result<Self, XmlError> {
        let mut r = Reader::from_str(text);
        r.config_mut().trim_text(false);
        let mut stack: Vec<Element> = Vec::new();
        let mut prolog = Vec::new();
        let mut epilog = Vec::new();
        let mut root: Option<Element> = None;
        let syntax = |r: &Reader<&[u8]>, e: &dyn std::fmt::Display| XmlError::Syntax {
            position: r.buffer_position(),
            detail: e.to_string(),
        };
        loop {
            let ev = r.read_event().map_err(|e| syntax(&r, &e))?;
            let node = match ev {
                Event::Eof => break,
                Event::Start(s) => {
                    stack.push(start_element(&s).map_err(|e| syntax(&r, &e))?);
                    continue;
                }
                Event::Empty(s) => Node::Element(start_element(&s).map_err(|e| syntax(&r, &e))?),
                Event::End(e) => {
                    let found = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let el = stack.pop().ok_or_else(|| XmlError::Mismatch {
                        expected: String::new(),
                        found: found.clone(),
                    })?;
                    if el.name != found {
                        return Err(XmlError::Mismatch {
                            expected: el.name,
                            found,
                        });
                    }
                    Node::Element(el)
                }
                Event::Text(t) => {
                    Node::Text(t.unescape().map_err(|e| syntax(&r, &e))?.into_owned())
                }
                Event::CData(t) => {
                    Node::CData(String::from_utf8_lossy(&t.into_inner()).into_owned())
                }
                Event::Comment(t) => {
                    Node::Comment(String::from_utf8_lossy(&t.into_inner()).into_owned())
                }
                Event::Decl(d) => Node::Raw(format!("<?{}?>", String::from_utf8_lossy(&d))),
                Event::PI(p) => {
                    Node::Raw(format!("<?{}?>", String::from_utf8_lossy(&p.into_inner())))
                }
                Event::DocType(d) => Node::Raw(format!(
                    "<!DOCTYPE {}>",
                    String::from_utf8_lossy(&d.into_inner())
                )),
            };
            match stack.last_mut() {
                Some(parent) => parent.children.push(node),
                None => match node {
                    Node::Element(e) if root.is_none() => root = Some(e),
                    n if root.is_none() => prolog.push(n),
                    n => epilog.push(n),
                },
            }
        }
        if let Some(open) = stack.pop() {
            return Err(XmlError::Syntax {
                position: r.buffer_position(),
                detail: format!("<{}> is never closed", open.name),
            });
        }
        Ok(Document {
            prolog,
            root: root.ok_or(XmlError::NoRoot)?,
            epilog,
        })
    }

    /// Serialize.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        for n in &self.prolog {
            n.write(&mut out);
        }
        self.root.write(&mut out);
        for n in &self.epilog {
            n.write(&mut out);
        }
        out
    }
}

fn start_element(s: &quick_xml::events::BytesStart<'_>) -> Result<Element, quick_xml::Error> {
    let mut e = Element::new(&String::from_utf8_lossy(s.name().as_ref()));
    for a in s.attributes() {
        let a = a.map_err(quick_xml::Error::from)?;
        let v = a.unescape_value()?.into_owned();
        e.attrs
            .push((String::from_utf8_lossy(a.key.as_ref()).into_owned(), v));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_everything() {
        let text = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- c -->\n<a:Root xmlns:a=\"urn:x\" a:k=\"v &amp; w\">\n  <a:Child>t &lt; u</a:Child>\n  <Empty/>\n</a:Root>\n";
        let d = Document::parse(text).unwrap();
        assert_eq!(d.to_xml(), text);
        assert_eq!(d.root.get_attr("k"), Some("v & w"));
        assert_eq!(d.root.find("Child").unwrap().text_content(), "t < u");
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(Document::parse("<a><b></a>").is_err());
        assert!(Document::parse("<a>").is_err());
        assert!(matches!(Document::parse("  "), Err(XmlError::NoRoot)));
    }
}
