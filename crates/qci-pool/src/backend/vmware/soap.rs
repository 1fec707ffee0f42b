//! A small blocking client for the vSphere SOAP API (`/sdk`, `urn:vim25`):
//! the envelope, the session cookie, faults, and a tree of the answer.
//!
//! Why not `vim_rs`: it is async, speaks HTTPS only, builds about 180
//! crates (minutes and gigabytes of RAM), and fails to read whole structs
//! from the govmomi simulator; the pool needs a dozen calls, which this
//! file covers over blocking reqwest (rustls) and quick-xml.

use quick_xml::events::Event;
use std::time::Duration;

/// One element of an answer: local names only (vSphere's prefixes vary,
/// e.g. `XMLSchema-instance:type` instead of `xsi:type`).
#[derive(Debug, Default, Clone)]
pub struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The first element named `name` at any depth, this one included.
    pub fn find(&self, name: &str) -> Option<&Node> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The text of the child `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// Why an answer is not the XML it should be.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("bad XML at {at}: {source}")]
    Syntax { at: u64, source: quick_xml::Error },
    #[error("unbalanced XML")]
    Unbalanced,
    #[error("empty XML")]
    Empty,
    #[error(transparent)]
    Encoding(#[from] quick_xml::encoding::EncodingError),
    #[error(transparent)]
    CharRef(quick_xml::Error),
}

/// Why a [`Client`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ca_file: {0}")]
    CaFile(#[source] reqwest::Error),
    #[error(transparent)]
    Build(reqwest::Error),
}

/// Parses `xml` into a tree of local names.
pub fn parse(xml: &str) -> Result<Node, XmlError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Node> = vec![Node::default()];
    let local = |raw: &[u8]| String::from_utf8_lossy(raw).into_owned();
    loop {
        let event = reader.read_event().map_err(|source| XmlError::Syntax {
            at: reader.buffer_position(),
            source,
        })?;
        let empty = matches!(event, Event::Empty(_));
        match event {
            Event::Start(e) | Event::Empty(e) => {
                let mut node = Node {
                    name: local(e.local_name().as_ref()),
                    ..Node::default()
                };
                for a in e.attributes().flatten() {
                    let value = a
                        .unescape_value()
                        .map(|v| v.into_owned())
                        .unwrap_or_default();
                    node.attrs.push((local(a.key.local_name().as_ref()), value));
                }
                if empty {
                    if let Some(top) = stack.last_mut() {
                        top.children.push(node);
                    }
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or(XmlError::Unbalanced)?;
                stack
                    .last_mut()
                    .ok_or(XmlError::Unbalanced)?
                    .children
                    .push(node);
            }
            Event::Text(t) => {
                let text = t.decode()?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(XmlError::CharRef)? {
                    Some(c) => c.to_string(),
                    None => match &r[..] {
                        b"amp" => "&".into(),
                        b"lt" => "<".into(),
                        b"gt" => ">".into(),
                        b"quot" => "\"".into(),
                        b"apos" => "'".into(),
                        other => format!("&{};", String::from_utf8_lossy(other)),
                    },
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let root = stack.pop().ok_or(XmlError::Empty)?;
    Ok(root)
}

/// Escapes text for an element's content or an attribute.
pub fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// A managed object reference: `<NAME type="TYPE">VALUE</NAME>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoRef {
    pub kind: String,
    pub value: String,
}

impl MoRef {
    pub fn new(kind: &str, value: &str) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    pub fn from_node(n: &Node) -> Option<Self> {
        Some(Self {
            kind: n.attr("type")?.to_owned(),
            value: n.text.trim().to_owned(),
        })
    }

    pub fn xml(&self, element: &str) -> String {
        format!(
            "<{element} type=\"{}\">{}</{element}>",
            esc(&self.kind),
            esc(&self.value)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SoapError {
    /// Not reached, or no answer in time.
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not SOAP.
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("an answer without a body")]
    NoBody,
    /// An HTTP error status, with an answer that is not SOAP either.
    #[error("{url} answered {status}: {source}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
        #[source]
        source: Box<SoapError>,
    },
    /// vSphere answered with a fault: its type (e.g. `InvalidPowerState`)
    /// and message.
    #[error("{kind}: {message}")]
    Fault { kind: String, message: String },
}

impl SoapError {
    /// Everything but a fault: vSphere was not reached, or did not answer
    /// in SOAP.
    pub fn is_transport(&self) -> bool {
        !matches!(self, Self::Fault { .. })
    }
}

/// The SOAP envelope of one method call.
pub fn envelope(method: &str, this: &MoRef, args: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
         <soapenv:Body><{method} xmlns=\"urn:vim25\">{}{args}</{method}></soapenv:Body></soapenv:Envelope>",
        this.xml("_this")
    )
}

/// The `returnval`s of an answer, or its fault.
pub fn read_answer(body: &str) -> Result<Node, SoapError> {
    let root = parse(body)?;
    if let Some(fault) = root.find("Fault") {
        let message = fault
            .text_of("faultstring")
            .unwrap_or("no message")
            .trim()
            .to_owned();
        let kind = fault
            .child("detail")
            .and_then(|d| d.children.first())
            .map(|f| {
                f.attr("type")
                    .map(str::to_owned)
                    .unwrap_or_else(|| f.name.trim_end_matches("Fault").to_owned())
            })
            .unwrap_or_else(|| "Fault".into());
        return Err(SoapError::Fault { kind, message });
    }
    let body = root
        .find("Body")
        .and_then(|b| b.children.first())
        .cloned()
        .ok_or(SoapError::NoBody)?;
    Ok(body)
}

/// One session with a vCenter or ESXi host.
pub struct Client {
    http: reqwest::blocking::Client,
    url: String,
    cookie: std::sync::Mutex<Option<String>>,
}

impl Client {
    pub fn new(url: &str, ca_pem: Option<&[u8]>, timeout: Duration) -> Result<Self, ClientError> {
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout);
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(ClientError::CaFile)?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            http: builder.build().map_err(ClientError::Build)?,
            url: url.to_owned(),
            cookie: std::sync::Mutex::new(None),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.url
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// The session cookie, for file transfers that need it.
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().ok().and_then(|c| c.clone())
    }

    /// Calls `method` on `this`; `args` is the XML of its parameters.
    pub fn call(&self, method: &str, this: &MoRef, args: &str) -> Result<Node, SoapError> {
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .body(envelope(method, this, args));
        if let Some(c) = self.cookie() {
            req = req.header("Cookie", c);
        }
        let http = |source| SoapError::Http {
            url: self.url.clone(),
            source,
        };
        let resp = req.send().map_err(http)?;
        if let Some(set) = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            && let Some(pair) = set.split(';').next()
            && pair.starts_with("vmware_soap_session")
            && let Ok(mut c) = self.cookie.lock()
        {
            *c = Some(pair.to_owned());
        }
        let status = resp.status();
        let text = resp.text().map_err(http)?;
        match read_answer(&text) {
            Err(e) if e.is_transport() && !status.is_success() => Err(SoapError::Status {
                url: self.url.clone(),
                status,
                source: Box::new(e),
            }),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_names_the_method_and_its_object() {
        let xml = envelope(
            "PowerOnVM_Task",
            &MoRef::new("VirtualMachine", "vm-42"),
            "<x>a&amp;b</x>",
        );
        let tree = parse(&xml).unwrap();
        let call = tree.find("PowerOnVM_Task").unwrap();
        let this = call.child("_this").unwrap();
        assert_eq!(this.attr("type"), Some("VirtualMachine"));
        assert_eq!(this.text, "vm-42");
        assert_eq!(call.text_of("x"), Some("a&b"));
    }

    #[test]
    fn faults_give_their_type_and_message() {
        // As the simulator (and vCenter) write them.
        let body = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>The attempted operation cannot be performed in the current state (Powered off).</faultstring><detail><InvalidPowerStateFault xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" xmlns="urn:vim25" XMLSchema-instance:type="InvalidPowerState"><requestedState>poweredOn</requestedState></InvalidPowerStateFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        match read_answer(body) {
            Err(SoapError::Fault { kind, message }) => {
                assert_eq!(kind, "InvalidPowerState");
                assert!(message.contains("Powered off"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
