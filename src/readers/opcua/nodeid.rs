//! Node ids as users write them in TOML, parsed without I/O. Namespace URIs (`nsu=`) stay
//! URIs here and are resolved to indices at connect time (servers may renumber namespaces
//! between restarts; a URI is stable).

use std::fmt;
use std::str::FromStr;

use opcua::types::{ByteString, Guid, Identifier, NodeId};

/// Where a node id's namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    Index(u16),
    Uri(String),
}

/// The identifier part, already checked (a Guid parses, base64 decodes).
#[derive(Debug, Clone, PartialEq)]
pub enum Id {
    Numeric(u32),
    String(String),
    Guid(Guid),
    Opaque(ByteString),
}

/// A node id from the configuration: `ns=2;s=Line1.Temp`, `ns=2;i=1001`, `i=2258`,
/// `ns=3;g=09087e75-8e5e-499b-954f-f2a9603db28a`, `ns=1;b=M/RbKBsRVkePCePcx24oRA==`,
/// `nsu=urn:line1:plc;s=Temp`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRef {
    pub namespace: Namespace,
    pub id: Id,
}

impl NodeRef {
    /// The node id for a namespace index (resolved by the caller for `nsu=`).
    pub fn to_node_id(&self, namespace: u16) -> NodeId {
        let id: Identifier = match &self.id {
            Id::Numeric(n) => (*n).into(),
            Id::String(s) => s.clone().into(),
            Id::Guid(g) => g.clone().into(),
            Id::Opaque(b) => b.clone().into(),
        };
        NodeId::new(namespace, id)
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Namespace::Index(0) => {}
            Namespace::Index(i) => write!(f, "ns={i};")?,
            Namespace::Uri(u) => write!(f, "nsu={u};")?,
        }
        match &self.id {
            Id::Numeric(n) => write!(f, "i={n}"),
            Id::String(s) => write!(f, "s={s}"),
            Id::Guid(g) => write!(f, "g={g}"),
            Id::Opaque(b) => write!(f, "b={}", b.as_base64()),
        }
    }
}

const FORMS: &str = "write it as \"ns=2;s=Line1.Temp\", \"ns=2;i=1001\", \"ns=2;g=<guid>\", \"ns=2;b=<base64>\" or \"nsu=<namespace uri>;s=...\"";

/// Why a node id cannot be read; every message says how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("empty node id; {FORMS}")]
    Empty,
    #[error("\"{0}\" has a namespace but no identifier; {FORMS}")]
    NoIdentifier(String),
    #[error("\"{0}\" has an empty namespace uri; {FORMS}")]
    EmptyUri(String),
    #[error("\"{text}\": namespace index \"{index}\" is not a number from 0 to 65535")]
    Index { text: String, index: String },
    #[error("\"{text}\": numeric identifier \"{id}\" is not a number from 0 to 4294967295")]
    Numeric { text: String, id: String },
    #[error("\"{0}\": the string identifier is empty")]
    EmptyString(String),
    #[error("\"{text}\": \"{id}\" is not a GUID")]
    Guid { text: String, id: String },
    #[error("\"{text}\": \"{id}\" is not base64")]
    Base64 { text: String, id: String },
    #[error("\"{0}\" is not a node id: the identifier must start with i=, s=, g= or b=; {FORMS}")]
    Form(String),
}

impl FromStr for NodeRef {
    type Err = NodeIdError;

    fn from_str(text: &str) -> Result<NodeRef, NodeIdError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(NodeIdError::Empty);
        }
        // The identifier may itself contain ';' (string ids), so split at the first one only,
        // and only when the text starts with a namespace part.
        let (namespace, rest) = if let Some(after) = s.strip_prefix("nsu=") {
            let Some((uri, rest)) = after.split_once(';') else {
                return Err(NodeIdError::NoIdentifier(text.to_string()));
            };
            if uri.is_empty() {
                return Err(NodeIdError::EmptyUri(text.to_string()));
            }
            (Namespace::Uri(uri.to_string()), rest)
        } else if let Some(after) = s.strip_prefix("ns=") {
            let Some((index, rest)) = after.split_once(';') else {
                return Err(NodeIdError::NoIdentifier(text.to_string()));
            };
            let index: u16 = index.parse().map_err(|_| NodeIdError::Index {
                text: text.to_string(),
                index: index.to_string(),
            })?;
            (Namespace::Index(index), rest)
        } else {
            (Namespace::Index(0), s)
        };
        let id = if let Some(v) = rest.strip_prefix("i=") {
            Id::Numeric(v.parse().map_err(|_| NodeIdError::Numeric {
                text: text.to_string(),
                id: v.to_string(),
            })?)
        } else if let Some(v) = rest.strip_prefix("s=") {
            if v.is_empty() {
                return Err(NodeIdError::EmptyString(text.to_string()));
            }
            Id::String(v.to_string())
        } else if let Some(v) = rest.strip_prefix("g=") {
            Id::Guid(Guid::from_str(v).map_err(|_| NodeIdError::Guid {
                text: text.to_string(),
                id: v.to_string(),
            })?)
        } else if let Some(v) = rest.strip_prefix("b=") {
            match ByteString::from_base64(v) {
                Some(b) if !v.is_empty() => Id::Opaque(b),
                _ => {
                    return Err(NodeIdError::Base64 {
                        text: text.to_string(),
                        id: v.to_string(),
                    });
                }
            }
        } else {
            return Err(NodeIdError::Form(text.to_string()));
        };
        Ok(NodeRef { namespace, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NodeRef, String> {
        s.parse().map_err(|e: NodeIdError| e.to_string())
    }

    #[test]
    fn every_standard_form() {
        assert_eq!(
            parse("ns=2;s=Line1.Temp").unwrap(),
            NodeRef {
                namespace: Namespace::Index(2),
                id: Id::String("Line1.Temp".into())
            }
        );
        assert_eq!(
            parse("ns=2;i=1001").unwrap(),
            NodeRef {
                namespace: Namespace::Index(2),
                id: Id::Numeric(1001)
            }
        );
        assert_eq!(
            parse("i=2258").unwrap(),
            NodeRef {
                namespace: Namespace::Index(0),
                id: Id::Numeric(2258)
            }
        );
        assert_eq!(
            parse("nsu=urn:line1:plc;s=A;B").unwrap(),
            NodeRef {
                namespace: Namespace::Uri("urn:line1:plc".into()),
                id: Id::String("A;B".into())
            }
        );
        let g = parse("ns=3;g=09087e75-8e5e-499b-954f-f2a9603db28a").unwrap();
        assert_eq!(g.to_string(), "ns=3;g=09087e75-8e5e-499b-954f-f2a9603db28a");
        let b = parse("ns=1;b=M/RbKBsRVkePCePcx24oRA==").unwrap();
        assert_eq!(b.to_string(), "ns=1;b=M/RbKBsRVkePCePcx24oRA==");
        assert_eq!(
            parse("ns=2;s=Line1.Temp").unwrap().to_node_id(2),
            NodeId::new(2, "Line1.Temp")
        );
        assert_eq!(parse(" ns=0;i=85 ").unwrap().to_string(), "i=85");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(parse("").unwrap_err(), format!("empty node id; {FORMS}"));
        assert_eq!(
            parse("ns=2").unwrap_err(),
            format!("\"ns=2\" has a namespace but no identifier; {FORMS}")
        );
        assert_eq!(
            parse("ns=x;i=1").unwrap_err(),
            "\"ns=x;i=1\": namespace index \"x\" is not a number from 0 to 65535"
        );
        assert_eq!(
            parse("ns=70000;i=1").unwrap_err(),
            "\"ns=70000;i=1\": namespace index \"70000\" is not a number from 0 to 65535"
        );
        assert_eq!(
            parse("ns=2;i=-1").unwrap_err(),
            "\"ns=2;i=-1\": numeric identifier \"-1\" is not a number from 0 to 4294967295"
        );
        assert_eq!(
            parse("ns=2;s=").unwrap_err(),
            "\"ns=2;s=\": the string identifier is empty"
        );
        assert_eq!(
            parse("ns=2;g=nope").unwrap_err(),
            "\"ns=2;g=nope\": \"nope\" is not a GUID"
        );
        assert_eq!(
            parse("ns=2;b=!!").unwrap_err(),
            "\"ns=2;b=!!\": \"!!\" is not base64"
        );
        assert_eq!(
            parse("nsu=;s=a").unwrap_err(),
            format!("\"nsu=;s=a\" has an empty namespace uri; {FORMS}")
        );
        assert_eq!(
            parse("Line1.Temp").unwrap_err(),
            format!(
                "\"Line1.Temp\" is not a node id: the identifier must start with i=, s=, g= or b=; {FORMS}"
            )
        );
    }
}
