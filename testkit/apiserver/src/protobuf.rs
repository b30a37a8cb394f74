//! Just enough of Kubernetes' protobuf encoding to take the bodies kubectl sends for built-in
//! types (`kubectl create namespace`, `kubectl create secret generic`): kubectl's typed
//! clients send protobuf and do not fall back to JSON on a 415. Decoded here: the envelope
//! (`k8s\0` + `runtime.Unknown`), `ObjectMeta`'s user-settable fields, Namespace and Secret.
//! Anything else is refused (the caller answers 415), never guessed.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// The media type kubectl sends.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// One field of a protobuf message: its number and value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

/// The fields of one message, in order.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (number, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => Wire::Varint(varint(&mut buf)?),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|e| e.to_string())?;
                if len > buf.len() {
                    return Err("truncated field".into());
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Wire::Bytes(bytes)
            }
            1 => {
                buf = buf.get(8..).ok_or("truncated fixed64")?;
                continue;
            }
            5 => {
                buf = buf.get(4..).ok_or("truncated fixed32")?;
                continue;
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((number, value));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// A `map<string, V>` entry (key = 1, value = 2).
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (n, w) in fields(bytes)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn metadata(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, w) in fields(bytes)? {
        let Wire::Bytes(b) = w else { continue };
        match n {
            1 => {
                meta.insert("name".into(), json!(text(b)?));
            }
            2 => {
                meta.insert("generateName".into(), json!(text(b)?));
            }
            3 => {
                meta.insert("namespace".into(), json!(text(b)?));
            }
            11 => {
                let (k, v) = entry(b)?;
                labels.insert(k, json!(text(v)?));
            }
            12 => {
                let (k, v) = entry(b)?;
                annotations.insert(k, json!(text(v)?));
            }
            14 => finalizers.push(json!(text(b)?)),
            // uid, resourceVersion, timestamps, ownerReferences, managedFields: not what
            // kubectl create sends.
            _ => {}
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

fn namespace(raw: &[u8]) -> Result<Value, String> {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace"});
    for (n, w) in fields(raw)? {
        if let (1, Wire::Bytes(b)) = (n, w) {
            ns["metadata"] = metadata(b)?;
        }
    }
    Ok(ns)
}

fn secret(raw: &[u8]) -> Result<Value, String> {
    let mut secret = json!({"apiVersion": "v1", "kind": "Secret"});
    let mut data = Map::new();
    let mut string_data = Map::new();
    for (n, w) in fields(raw)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => secret["metadata"] = metadata(b)?,
            (2, Wire::Bytes(b)) => {
                let (k, v) = entry(b)?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(v);
                data.insert(k, json!(encoded));
            }
            (3, Wire::Bytes(b)) => secret["type"] = json!(text(b)?),
            (4, Wire::Bytes(b)) => {
                let (k, v) = entry(b)?;
                string_data.insert(k, json!(text(v)?));
            }
            (5, Wire::Varint(v)) => secret["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        secret["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        secret["stringData"] = Value::Object(string_data);
    }
    Ok(secret)
}

/// The JSON form of a protobuf request body, for the kinds listed in the module docs.
pub(crate) fn decode(body: &[u8]) -> Result<Value, String> {
    let unknown = body.strip_prefix(MAGIC).ok_or("no k8s protobuf envelope")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (n, w) in fields(unknown)? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                for (n, w) in fields(type_meta)? {
                    match (n, w) {
                        (1, Wire::Bytes(b)) => api_version = text(b)?,
                        (2, Wire::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    let raw = raw.ok_or("the envelope holds no object")?;
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(raw),
        ("v1", "Secret") => secret(raw),
        _ => Err(format!(
            "{api_version} {kind} in protobuf is not served by the stand-in; send JSON"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut key = (number << 3) | 2;
        loop {
            let byte = (key & 0x7f) as u8;
            key >>= 7;
            out.push(if key == 0 { byte } else { byte | 0x80 });
            if key == 0 {
                break;
            }
        }
        out.push(u8::try_from(bytes.len()).unwrap());
        out.extend_from_slice(bytes);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), field(1, &type_meta), field(2, raw)].concat()
    }

    #[test]
    fn namespaces_and_secrets_decode_to_their_json_form() {
        let label = [field(1, b"team"), field(2, b"sync")].concat();
        let meta = [field(1, b"x"), field(11, &label)].concat();
        let ns = decode(&envelope("v1", "Namespace", &field(1, &meta))).unwrap();
        assert_eq!(
            ns,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "sync"}}})
        );
        let entry = [field(1, b"client_id"), field(2, b"dmsa-1")].concat();
        let raw = [
            field(1, &field(1, b"src")),
            field(2, &entry),
            field(3, b"Opaque"),
        ]
        .concat();
        let secret = decode(&envelope("v1", "Secret", &raw)).unwrap();
        assert_eq!(secret["data"]["client_id"], "ZG1zYS0x");
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(secret["metadata"]["name"], "src");
    }

    #[test]
    fn other_kinds_and_broken_bodies_are_refused() {
        assert!(decode(&envelope("apps/v1", "Deployment", &[])).is_err());
        assert!(decode(b"{\"json\": true}").is_err());
        let mut truncated = envelope("v1", "Namespace", &field(1, &field(1, b"x")));
        truncated.pop();
        assert!(decode(&truncated).is_err());
    }
}
