//! `streamgate browse opcua`: the address space below a node, level by level (one Browse and
//! one Read per level, in chunks), with what a config needs: node ids in both forms (`ns=`
//! and the stable `nsu=`), data type, access level and the current value.

use std::collections::HashMap;
use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, ByteString, DataValue,
    Identifier, NodeClass, NodeId, NumericRange, QualifiedName, ReadValueId, ReferenceTypeId,
    StatusCode, TimestampsToReturn, Variant,
};

use super::mapping;
use super::nodeid::{Id, Namespace, NodeRef};
use crate::payload::Value;

/// Nodes per Browse or Read request (servers limit the operations per call).
const PER_REQUEST: usize = 100;
/// Server_NamespaceArray (ns=0;i=2255).
const NAMESPACE_ARRAY: u32 = 2255;

/// One node found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Browsed {
    /// Levels below the start node (its children are at 1).
    pub depth: u32,
    /// Browse names from the start node down, without namespace indexes.
    pub path: Vec<String>,
    /// `ns=2;s=Line1.Temp` (index form, as the server numbers its namespaces now).
    pub node_id: String,
    /// `nsu=urn:...;s=Line1.Temp` (stable across server restarts); `None` in namespace 0.
    pub node_id_uri: Option<String>,
    /// `2:Temp`.
    pub browse_name: String,
    pub display_name: String,
    pub node_class: String,
    /// Variables: the data type's name (`Double`) or its node id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
    /// Variables: `read`, `write`, `read,write`, `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// Variables: the current value of a scalar (arrays: see `array`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Variables: elements when the value is an array (a tag needs `index`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array: Option<usize>,
    /// Variables: why there is no value (a status, a type a sample cannot carry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_error: Option<String>,
    /// Children not listed: the depth limit, or namespace 0 (the server's own objects)
    /// below the start node.
    pub expandable: bool,
}

impl Browsed {
    /// The form a config should use: `nsu=` where there is one.
    pub fn config_node_id(&self) -> &str {
        self.node_id_uri.as_deref().unwrap_or(&self.node_id)
    }

    pub fn readable(&self) -> bool {
        self.access
            .as_deref()
            .is_some_and(|a| a.split(',').any(|x| x == "read"))
    }
}

/// What stopped a browse.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error("{service} failed: {status}")]
    Service {
        service: &'static str,
        status: StatusCode,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the start node {node}: {status}")]
    Start { node: String, status: StatusCode },
}

/// The name of a standard data type (namespace 0), or its node id.
fn data_type_name(id: &NodeId) -> String {
    const NAMES: [&str; 30] = [
        "",
        "Boolean",
        "SByte",
        "Byte",
        "Int16",
        "UInt16",
        "Int32",
        "UInt32",
        "Int64",
        "UInt64",
        "Float",
        "Double",
        "String",
        "DateTime",
        "Guid",
        "ByteString",
        "XmlElement",
        "NodeId",
        "ExpandedNodeId",
        "StatusCode",
        "QualifiedName",
        "LocalizedText",
        "Structure",
        "DataValue",
        "BaseDataType",
        "DiagnosticInfo",
        "Number",
        "Integer",
        "UInteger",
        "Enumeration",
    ];
    match (&id.namespace, &id.identifier) {
        (0, Identifier::Numeric(n)) if (1..NAMES.len() as u32).contains(n) => {
            NAMES[*n as usize].to_string()
        }
        _ => id.to_string(),
    }
}

/// A browse name as OPC UA writes it: `2:Temp` (the namespace index omitted for 0).
fn qualified(name: &QualifiedName) -> String {
    let text = name.name.value().clone().unwrap_or_default();
    match name.namespace_index {
        0 => text,
        ns => format!("{ns}:{text}"),
    }
}

fn access_text(bits: u8) -> String {
    match (bits & 1 != 0, bits & 2 != 0) {
        (true, true) => "read,write",
        (true, false) => "read",
        (false, true) => "write",
        (false, false) => "none",
    }
    .to_string()
}

/// `nsu=<uri>;...` for a node outside namespace 0.
fn uri_form(id: &NodeId, namespaces: &[String]) -> Option<String> {
    if id.namespace == 0 {
        return None;
    }
    let uri = namespaces.get(usize::from(id.namespace))?;
    let id = match &id.identifier {
        Identifier::Numeric(n) => Id::Numeric(*n),
        Identifier::String(s) => Id::String(s.value().clone().unwrap_or_default()),
        Identifier::Guid(g) => Id::Guid(g.clone()),
        Identifier::ByteString(b) => Id::Opaque(b.clone()),
    };
    Some(
        NodeRef {
            namespace: Namespace::Uri(uri.clone()),
            id,
        }
        .to_string(),
    )
}

fn read_id(node: &NodeId, attribute: AttributeId) -> ReadValueId {
    ReadValueId {
        node_id: node.clone(),
        attribute_id: attribute as u32,
        index_range: NumericRange::None,
        data_encoding: QualifiedName::null(),
    }
}

/// A service call bounded by `within`; its error as the status the server or client gave.
async fn timed<T>(
    within: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, opcua::types::Error>>,
) -> Result<T, BrowseError> {
    match tokio::time::timeout(within, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BrowseError::Service {
            service: what,
            status: e.status(),
        }),
        Err(_) => Err(BrowseError::Timeout(what)),
    }
}

/// Reads `ids` in chunks.
async fn read_all(
    session: &Session,
    ids: &[ReadValueId],
    within: Duration,
) -> Result<Vec<DataValue>, BrowseError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(PER_REQUEST) {
        out.extend(
            timed(
                within,
                "Read",
                session.read(chunk, TimestampsToReturn::Neither, 0.0),
            )
            .await?,
        );
    }
    Ok(out)
}

/// A child found by Browse, before its attributes are read.
struct Child {
    parent: usize,
    id: NodeId,
    browse_name: QualifiedName,
    display_name: String,
    class: NodeClass,
}

/// The nodes below `start`, `depth` levels down, in tree order (each node before its
/// children). Children in namespace 0 are listed, not expanded, unless `start` is in
/// namespace 0 too and `depth` reaches them (the server's own objects are many).
/// At most `max_nodes` nodes; the rest are marked expandable.
pub async fn browse(
    session: &Session,
    start: &NodeRef,
    depth: u32,
    max_nodes: usize,
    within: Duration,
) -> Result<Vec<Browsed>, BrowseError> {
    let namespaces: Vec<String> = match read_all(
        session,
        &[read_id(
            &NodeId::new(0, NAMESPACE_ARRAY),
            AttributeId::Value,
        )],
        within,
    )
    .await?
    .pop()
    .and_then(|dv| dv.value)
    {
        Some(Variant::Array(a)) => a
            .values
            .iter()
            .map(|v| match v {
                Variant::String(s) => s.value().clone().unwrap_or_default(),
                _ => String::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let namespace = match &start.namespace {
        Namespace::Index(n) => *n,
        Namespace::Uri(uri) => match namespaces.iter().position(|u| u == uri) {
            Some(n) => n as u16,
            None => {
                return Err(BrowseError::Start {
                    node: start.to_string(),
                    status: StatusCode::BadNodeIdUnknown,
                });
            }
        },
    };
    let start = &start.to_node_id(namespace);
    // The start node must exist: its BrowseName says so.
    let check = read_all(session, &[read_id(start, AttributeId::BrowseName)], within).await?;
    if let Some(status) = check.first().and_then(|dv| dv.status)
        && !status.is_good()
    {
        return Err(BrowseError::Start {
            node: start.to_string(),
            status,
        });
    }

    let mut nodes: Vec<Browsed> = Vec::new();
    // The node id of each of `nodes`.
    let mut node_ids: Vec<NodeId> = Vec::new();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    // The nodes of the level being expanded: (index in `nodes` or None for the start, id).
    let mut level: Vec<(Option<usize>, NodeId)> = vec![(None, start.clone())];
    let mut roots: Vec<usize> = Vec::new();
    for d in 1..=depth {
        if level.is_empty() || nodes.len() >= max_nodes {
            break;
        }
        let found = browse_level(session, &level, within).await?;
        let mut next = Vec::new();
        let mut variables: Vec<usize> = Vec::new();
        for child in found {
            if nodes.len() >= max_nodes {
                if let Some(p) = level[child.parent].0 {
                    nodes[p].expandable = true;
                }
                continue;
            }
            let parent = level[child.parent].0;
            let mut path = parent.map(|p| nodes[p].path.clone()).unwrap_or_default();
            path.push(child.browse_name.name.value().clone().unwrap_or_default());
            let i = nodes.len();
            node_ids.push(child.id.clone());
            nodes.push(Browsed {
                depth: d,
                path,
                node_id: child.id.to_string(),
                node_id_uri: uri_form(&child.id, &namespaces),
                browse_name: qualified(&child.browse_name),
                display_name: child.display_name,
                node_class: format!("{:?}", child.class),
                data_type: None,
                access: None,
                value: None,
                array: None,
                value_error: None,
                expandable: false,
            });
            match parent {
                Some(p) => children.entry(p).or_default().push(i),
                None => roots.push(i),
            }
            if child.class == NodeClass::Variable {
                variables.push(i);
            }
            let server_own = child.id.namespace == 0 && start.namespace != 0;
            if matches!(child.class, NodeClass::Object | NodeClass::Variable) {
                if d < depth && !server_own {
                    next.push((Some(i), child.id));
                } else if child.class == NodeClass::Object {
                    nodes[i].expandable = true;
                }
            }
        }
        describe(session, &mut nodes, &node_ids, &variables, within).await?;
        level = next;
    }
    // Tree order.
    let mut order = Vec::with_capacity(nodes.len());
    let mut stack: Vec<usize> = roots.into_iter().rev().collect();
    while let Some(i) = stack.pop() {
        order.push(i);
        if let Some(c) = children.get(&i) {
            stack.extend(c.iter().rev());
        }
    }
    let mut slots: Vec<Option<Browsed>> = nodes.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// The hierarchical children of every node of `level` (Browse, then BrowseNext while the
/// server has more).
async fn browse_level(
    session: &Session,
    level: &[(Option<usize>, NodeId)],
    within: Duration,
) -> Result<Vec<Child>, BrowseError> {
    let mut out = Vec::new();
    for (c, chunk) in level.chunks(PER_REQUEST).enumerate() {
        let descriptions: Vec<BrowseDescription> = chunk
            .iter()
            .map(|(_, id)| BrowseDescription {
                node_id: id.clone(),
                browse_direction: BrowseDirection::Forward,
                reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
                include_subtypes: true,
                node_class_mask: 0,
                result_mask: BrowseResultMask::All as u32,
            })
            .collect();
        let mut results = timed(within, "Browse", session.browse(&descriptions, 0, None)).await?;
        let mut owners: Vec<usize> = (0..results.len()).map(|i| c * PER_REQUEST + i).collect();
        loop {
            let mut more: Vec<(usize, ByteString)> = Vec::new();
            for (r, owner) in results.iter().zip(&owners) {
                for reference in r.references.iter().flatten() {
                    out.push(Child {
                        parent: *owner,
                        id: reference.node_id.node_id.clone(),
                        browse_name: reference.browse_name.clone(),
                        display_name: reference
                            .display_name
                            .text
                            .value()
                            .clone()
                            .unwrap_or_default(),
                        class: reference.node_class,
                    });
                }
                if !r.continuation_point.is_null() && !r.continuation_point.is_empty() {
                    more.push((*owner, r.continuation_point.clone()));
                }
            }
            if more.is_empty() {
                break;
            }
            let points: Vec<ByteString> = more.iter().map(|(_, p)| p.clone()).collect();
            results = timed(within, "BrowseNext", session.browse_next(false, &points)).await?;
            owners = more.into_iter().map(|(o, _)| o).collect();
        }
    }
    Ok(out)
}

/// Data type, access level and value of the variables `which`.
async fn describe(
    session: &Session,
    nodes: &mut [Browsed],
    node_ids: &[NodeId],
    which: &[usize],
    within: Duration,
) -> Result<(), BrowseError> {
    let mut ids = Vec::with_capacity(which.len() * 3);
    for &i in which {
        let id = &node_ids[i];
        ids.push(read_id(id, AttributeId::Value));
        ids.push(read_id(id, AttributeId::DataType));
        ids.push(read_id(id, AttributeId::AccessLevel));
    }
    let values = read_all(session, &ids, within).await?;
    for (k, &i) in which.iter().enumerate() {
        let [value, data_type, access] = [0, 1, 2].map(|a| values.get(k * 3 + a));
        let n = &mut nodes[i];
        if let Some(Variant::NodeId(t)) = data_type.and_then(|dv| dv.value.as_ref()) {
            n.data_type = Some(data_type_name(t));
        }
        if let Some(Variant::Byte(bits)) = access.and_then(|dv| dv.value.as_ref()) {
            n.access = Some(access_text(*bits));
        }
        match value {
            Some(dv) => match (&dv.value, dv.status) {
                (Some(Variant::Array(a)), _) if a.values.len() != 1 => {
                    n.array = Some(a.values.len());
                }
                (Some(v), _) => match mapping::value(v) {
                    Ok(v) => n.value = Some(v),
                    Err(why) => n.value_error = Some(why.short()),
                },
                (None, status) => {
                    n.value_error = Some(
                        mapping::status_name(status.unwrap_or(StatusCode::BadNoData)).to_string(),
                    )
                }
            },
            None => n.value_error = Some("no answer".into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_forms() {
        assert_eq!(data_type_name(&NodeId::new(0, 11u32)), "Double");
        assert_eq!(data_type_name(&NodeId::new(2, 3001u32)), "ns=2;i=3001");
        assert_eq!(access_text(3), "read,write");
        assert_eq!(access_text(1), "read");
        assert_eq!(access_text(0), "none");
        assert_eq!(qualified(&QualifiedName::new(3, "Temp")), "3:Temp");
        assert_eq!(qualified(&QualifiedName::new(0, "Server")), "Server");
        let ns = vec![
            "http://opcfoundation.org/UA/".to_string(),
            "urn:line1".into(),
        ];
        assert_eq!(
            uri_form(&NodeId::new(1, "Line1.Temp"), &ns).as_deref(),
            Some("nsu=urn:line1;s=Line1.Temp")
        );
        assert_eq!(uri_form(&NodeId::new(0, 85u32), &ns), None);
        assert_eq!(uri_form(&NodeId::new(5, 1u32), &ns), None);
    }
}
