//! The Open Inference Protocol (KServe v2) request and response bodies, with its binary tensor
//! data extension: pure parsing and encoding, apart from HTTP, so they are tested (and fuzzed)
//! on their own.
//!
//! A request is JSON, or, with the `Inference-Header-Content-Length: N` header, N bytes of JSON
//! followed by the raw data of every input whose `parameters.binary_data_size` says how many
//! bytes it takes (in input order). Raw `BYTES` elements are each a 4-byte little-endian length
//! and the bytes; numbers are little-endian. Outputs are returned as binary when the request's
//! `parameters.binary_data_output` is true (what `tritonclient` asks for when it names no
//! outputs) or an output's `parameters.binary_data` is, else as JSON.

use base64::Engine;
use serde_json::{json, Map, Value};

/// The header giving the length of the JSON part of a body with binary tensor data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Most elements one input may hold (images, or FP32 values).
pub const MAX_ELEMENTS: usize = 1 << 26;

/// The data of one input tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// `BYTES` elements (encoded images): base64 strings in JSON, raw in binary.
    Bytes(Vec<Vec<u8>>),
    /// `FP32` values, row-major.
    Fp32(Vec<f32>),
}

/// One input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// The input's name (`image` or `input`; not checked).
    pub name: String,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Its elements.
    pub data: Data,
}

/// An output the client asked for, and whether as binary (`None`: the request's default).
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    /// The output's name.
    pub name: String,
    /// `parameters.binary_data`, if given.
    pub binary: Option<bool>,
}

/// A parsed inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the response.
    pub id: Option<Value>,
    /// The input tensors, in order.
    pub inputs: Vec<Input>,
    /// The outputs asked for; `None` means all.
    pub outputs: Option<Vec<Requested>>,
    /// `parameters.binary_data_output`.
    pub binary_output: bool,
}

impl Request {
    /// The request's id as text, for routing.
    pub fn id_text(&self) -> Option<&str> {
        self.id.as_ref().and_then(Value::as_str)
    }
}

/// The number of elements of `shape`, checked (no overflow, no negative dimension).
pub fn elements(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Parses a request body; `header_length` is the `Inference-Header-Content-Length` header.
/// Errors are the message for the client.
pub fn parse(body: &[u8], header_length: Option<&str>) -> Result<Request, String> {
    let (header, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(text) => {
            let n: usize = text.trim().parse().map_err(|_| {
                format!("Inference-Header-Content-Length {text:?} is not a byte count")
            })?;
            if n > body.len() {
                return Err(format!(
                    "Inference-Header-Content-Length {n} exceeds the body's {} bytes",
                    body.len()
                ));
            }
            body.split_at(n)
        }
    };
    let request: Value = serde_json::from_slice(header)
        .map_err(|e| format!("the request is not valid JSON: {e}"))?;
    let inputs_json = request
        .get("inputs")
        .and_then(Value::as_array)
        .filter(|i| !i.is_empty())
        .ok_or("expected \"inputs\": a non-empty array of tensors")?;
    let mut inputs = Vec::with_capacity(inputs_json.len());
    for (i, input) in inputs_json.iter().enumerate() {
        inputs.push(parse_input(i, input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes of binary data follow the JSON that no input claims (binary_data_size)",
            binary.len()
        ));
    }
    let outputs = match request.get("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|o| {
                    let name = o
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or("every requested output needs a \"name\"")?;
                    Ok(Requested {
                        name: name.to_string(),
                        binary: o
                            .get("parameters")
                            .and_then(|p| p.get("binary_data"))
                            .and_then(Value::as_bool),
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
        Some(_) => return Err("\"outputs\" must be an array".into()),
    };
    let binary_output = request
        .get("parameters")
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Request {
        id: request.get("id").cloned(),
        inputs,
        outputs,
        binary_output,
    })
}

/// Input `i` of a request; its binary data, if any, is taken from the front of `binary`.
fn parse_input(i: usize, input: &Value, binary: &mut &[u8]) -> Result<Input, String> {
    let name = input
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let shape_json: Vec<i64> = input
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|s| s.iter().map(Value::as_i64).collect())
        .ok_or_else(|| format!("input {i}: \"shape\" must be an array of integers"))?;
    let n = elements(&shape_json)
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            format!("input {i}: shape {shape_json:?} is negative or holds more than {MAX_ELEMENTS} elements")
        })?;
    let shape: Vec<usize> = shape_json.iter().map(|&d| d as usize).collect();
    let datatype = input.get("datatype").and_then(Value::as_str);
    let binary_size = input
        .get("parameters")
        .and_then(|p| p.get("binary_data_size"));
    let data = match binary_size {
        Some(size) => binary_data(i, size, datatype, binary)?,
        None => json_data(i, input, datatype)?,
    };
    let got = match &data {
        Data::Bytes(b) => b.len(),
        Data::Fp32(f) => f.len(),
    };
    if got != n {
        return Err(format!(
            "input {i}: shape {shape_json:?} needs {n} elements, the data holds {got}"
        ));
    }
    Ok(Input { name, shape, data })
}

/// The data of input `i` sent as binary: `size` (its `binary_data_size`) bytes taken from the
/// front of `binary`.
fn binary_data(
    i: usize,
    size: &Value,
    datatype: Option<&str>,
    binary: &mut &[u8],
) -> Result<Data, String> {
    let size = size
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| format!("input {i}: binary_data_size must be a byte count"))?;
    if size > binary.len() {
        return Err(format!(
            "input {i}: binary_data_size {size} exceeds the {} bytes left",
            binary.len()
        ));
    }
    let (raw, rest) = binary.split_at(size);
    *binary = rest;
    match datatype {
        Some("BYTES") => Ok(Data::Bytes(raw_bytes(i, raw)?)),
        Some("FP32") => {
            if raw.len() % 4 != 0 {
                return Err(format!(
                    "input {i}: {} bytes of FP32 data is not a whole number of values",
                    raw.len()
                ));
            }
            Ok(Data::Fp32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ))
        }
        other => Err(unsupported(i, other)),
    }
}

/// The data of input `i` sent as JSON (`"data"`, nested or flat): base64 strings for `BYTES`,
/// finite numbers for `FP32`.
fn json_data(i: usize, input: &Value, datatype: Option<&str>) -> Result<Data, String> {
    let mut flat = Vec::new();
    flatten(
        input
            .get("data")
            .ok_or_else(|| format!("input {i}: no \"data\" and no binary_data_size"))?,
        &mut flat,
        0,
    )
    .map_err(|e| format!("input {i}: {e}"))?;
    match datatype {
        Some("BYTES") => Ok(Data::Bytes(
            flat.iter()
                .enumerate()
                .map(|(j, v)| {
                    let text = v
                        .as_str()
                        .ok_or_else(|| format!("input {i}: element {j} is not a base64 string"))?;
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|e| format!("input {i}: element {j} is not valid base64: {e}"))
                })
                .collect::<Result<_, String>>()?,
        )),
        Some("FP32") => Ok(Data::Fp32(
            flat.iter()
                .map(|v| v.as_f64().map(|x| x as f32).filter(|x| x.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("input {i}: FP32 data must be finite numbers"))?,
        )),
        other => Err(unsupported(i, other)),
    }
}

fn unsupported(i: usize, datatype: Option<&str>) -> String {
    format!("input {i}: datatype {datatype:?} is not supported: use BYTES (encoded images) or FP32")
}

/// Raw `BYTES` elements: each a 4-byte little-endian length and that many bytes.
fn raw_bytes(i: usize, mut raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return Err(format!(
                "input {i}: BYTES element {} has a cut length prefix",
                out.len()
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(format!(
                "input {i}: BYTES element {} claims {len} bytes, {} are left",
                out.len(),
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(len);
        out.push(element.to_vec());
        raw = rest;
    }
    Ok(out)
}

/// Nested arrays as one row-major list; deeper than any real tensor is refused rather than
/// recursed into.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<(), String> {
    if depth > 32 {
        return Err("data nested deeper than 32 levels".into());
    }
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out, depth + 1)),
        other => {
            out.push(other);
            Ok(())
        }
    }
}

/// The data of one output tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum OutData {
    /// Text elements (`BYTES`).
    Bytes(Vec<String>),
    /// Binary elements (`BYTES`: raw in binary data, base64 strings in JSON).
    Blobs(Vec<Vec<u8>>),
    /// `INT64` values.
    Int64(Vec<i64>),
    /// `FP32` values.
    Fp32(Vec<f32>),
}

/// One output tensor of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The output's name.
    pub name: &'static str,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Its elements.
    pub data: OutData,
    /// Sent only when the request names it (large, or rarely wanted).
    pub on_request: bool,
}

impl Output {
    /// A one-dimensional output sent by default.
    pub fn vector(name: &'static str, data: OutData) -> Self {
        Output {
            name,
            shape: vec![data.len()],
            data,
            on_request: false,
        }
    }
}

/// Whether the request names output `name`.
pub fn asks_for(request: &Request, name: &str) -> bool {
    request
        .outputs
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.name == name))
}

impl OutData {
    fn datatype(&self) -> &'static str {
        match self {
            OutData::Bytes(_) | OutData::Blobs(_) => "BYTES",
            OutData::Int64(_) => "INT64",
            OutData::Fp32(_) => "FP32",
        }
    }

    fn len(&self) -> usize {
        match self {
            OutData::Bytes(v) => v.len(),
            OutData::Blobs(v) => v.len(),
            OutData::Int64(v) => v.len(),
            OutData::Fp32(v) => v.len(),
        }
    }

    fn json(&self) -> Value {
        match self {
            OutData::Bytes(v) => json!(v),
            OutData::Blobs(v) => json!(v
                .iter()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                .collect::<Vec<_>>()),
            OutData::Int64(v) => json!(v),
            OutData::Fp32(v) => json!(v),
        }
    }

    fn raw(&self) -> Vec<u8> {
        match self {
            OutData::Bytes(v) => v
                .iter()
                .flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes()))
                .collect(),
            OutData::Blobs(v) => v
                .iter()
                .flat_map(|b| {
                    (b.len() as u32)
                        .to_le_bytes()
                        .into_iter()
                        .chain(b.iter().copied())
                })
                .collect(),
            OutData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// An encoded response: the body, and the JSON header's length when binary data follows it.
pub struct Encoded {
    /// The response body.
    pub body: Vec<u8>,
    /// The `Inference-Header-Content-Length` to send, when binary data follows the JSON.
    pub header_length: Option<usize>,
}

/// Encodes the response to `request`: the outputs it names, in its order (without names, every
/// output that is not `on_request`), each as binary or JSON as asked. An output asked for that
/// the model does not have is an error.
pub fn encode(
    model_name: &str,
    model_version: u64,
    request: &Request,
    outputs: Vec<Output>,
) -> Result<Encoded, String> {
    let chosen: Vec<(Output, bool)> = match &request.outputs {
        None => outputs
            .into_iter()
            .filter(|o| !o.on_request)
            .map(|o| (o, request.binary_output))
            .collect(),
        Some(asked) => {
            let mut all = outputs;
            asked
                .iter()
                .map(|r| {
                    let at = all.iter().position(|o| o.name == r.name).ok_or_else(|| {
                        let names: Vec<&str> = all.iter().map(|o| o.name).collect();
                        format!(
                            "unknown output {:?}: outputs are {}",
                            r.name,
                            names.join(", ")
                        )
                    })?;
                    let o = all.swap_remove(at);
                    Ok((o, r.binary.unwrap_or(request.binary_output)))
                })
                .collect::<Result<_, String>>()?
        }
    };
    let mut binary = Vec::new();
    let tensors: Vec<Value> = chosen
        .iter()
        .map(|(o, as_binary)| {
            let data = &o.data;
            let mut t = Map::new();
            t.insert("name".into(), json!(o.name));
            t.insert("datatype".into(), json!(data.datatype()));
            t.insert("shape".into(), json!(o.shape));
            if *as_binary {
                let raw = data.raw();
                t.insert(
                    "parameters".into(),
                    json!({ "binary_data_size": raw.len() }),
                );
                binary.extend(raw);
            } else {
                t.insert("data".into(), data.json());
            }
            Value::Object(t)
        })
        .collect();
    let mut header = json!({
        "model_name": model_name,
        "model_version": model_version.to_string(),
        "outputs": tensors,
    });
    if let Some(id) = &request.id {
        header["id"] = id.clone();
    }
    let mut body = serde_json::to_vec(&header).expect("plain data");
    let any_binary = chosen.iter().any(|(_, b)| *b);
    let header_length = any_binary.then_some(body.len());
    body.extend(binary);
    Ok(Encoded {
        body,
        header_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn binary_request(images: &[&[u8]], json_extra: Value) -> (Vec<u8>, String) {
        let mut raw = Vec::new();
        for image in images {
            raw.extend((image.len() as u32).to_le_bytes());
            raw.extend(*image);
        }
        let mut header = json!({
            "id": "r1",
            "inputs": [{ "name": "image", "datatype": "BYTES", "shape": [images.len()],
                         "parameters": { "binary_data_size": raw.len() } }],
        });
        if let (Some(h), Some(extra)) = (header.as_object_mut(), json_extra.as_object()) {
            h.extend(extra.clone());
        }
        let mut body = serde_json::to_vec(&header).unwrap();
        let n = body.len();
        body.extend(raw);
        (body, n.to_string())
    }

    #[test]
    fn binary_bytes_inputs_are_split_by_their_length_prefixes() {
        let (body, n) = binary_request(&[b"\x89PNG one", b"", b"two"], json!({}));
        let r = parse(&body, Some(&n)).unwrap();
        assert_eq!(r.id_text(), Some("r1"));
        assert_eq!(
            r.inputs[0].data,
            Data::Bytes(vec![b"\x89PNG one".to_vec(), vec![], b"two".to_vec()])
        );
        // Cut anywhere inside the binary part: an error, never a panic.
        for cut in n.parse::<usize>().unwrap()..body.len() {
            assert!(parse(&body[..cut], Some(&n)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn json_and_binary_fp32_agree() {
        let values = [0.5f32, -1.25, 3.0, 0.0];
        let json_body = json!({ "inputs": [{ "name": "input", "datatype": "FP32",
            "shape": [1, 1, 2, 2], "data": [[0.5, -1.25], [3.0, 0.0]] }] });
        let a = parse(&serde_json::to_vec(&json_body).unwrap(), None).unwrap();
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut body = serde_json::to_vec(&json!({ "inputs": [{ "name": "input",
            "datatype": "FP32", "shape": [1, 1, 2, 2],
            "parameters": { "binary_data_size": 16 } }] }))
        .unwrap();
        let n = body.len().to_string();
        body.extend(raw);
        let b = parse(&body, Some(&n)).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].shape, vec![1, 1, 2, 2]);
    }

    #[test]
    fn shapes_are_checked_without_overflow() {
        for shape in [
            json!([4611686018427387904i64, 4]),
            json!([-1, 3]),
            json!([2, -2]),
        ] {
            let body = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": shape,
                                           "data": [1.0] }] });
            let e = parse(&serde_json::to_vec(&body).unwrap(), None).unwrap_err();
            assert!(e.contains("shape"), "{e}");
        }
        assert_eq!(elements(&[i64::MAX, 4]), None);
        assert_eq!(elements(&[]), Some(1));
    }

    #[test]
    fn outputs_come_as_asked() {
        let outputs = || {
            vec![
                Output::vector("label", OutData::Bytes(vec!["Shirt".into(), "Bag".into()])),
                Output::vector("class", OutData::Int64(vec![6, 8])),
                Output::vector("score", OutData::Fp32(vec![0.75, 1.0])),
                Output {
                    name: "neighbor_ids",
                    shape: vec![2, 2],
                    data: OutData::Int64(vec![1, 2, 3, 4]),
                    on_request: true,
                },
            ]
        };
        // tritonclient naming no outputs: all of them, binary.
        let (body, n) = binary_request(
            &[b"a", b"b"],
            json!({"parameters": {"binary_data_output": true}}),
        );
        let r = parse(&body, Some(&n)).unwrap();
        let e = encode("m", 3, &r, outputs()).unwrap();
        let h = e.header_length.unwrap();
        let header: Value = serde_json::from_slice(&e.body[..h]).unwrap();
        assert_eq!(header["id"], "r1");
        assert_eq!(header["model_version"], "3");
        let sizes: Vec<u64> = header["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, vec![4 + 5 + 4 + 3, 16, 8]);
        let rest = &e.body[h..];
        assert_eq!(&rest[..9], b"\x05\0\0\0Shirt");
        assert_eq!(i64::from_le_bytes(rest[16..24].try_into().unwrap()), 6);
        // One output asked for, as JSON.
        let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1],
            "data": [0.0] }], "outputs": [{ "name": "score", "parameters": { "binary_data": false } }] });
        let r = parse(&serde_json::to_vec(&body).unwrap(), None).unwrap();
        let e = encode("m", 1, &r, outputs()).unwrap();
        assert!(e.header_length.is_none());
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(
            v["outputs"],
            json!([{ "name": "score", "datatype": "FP32", "shape": [2], "data": [0.75, 1.0] }])
        );
        assert!(v.get("id").is_none());
        let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1],
            "data": [0.0] }], "outputs": [{ "name": "logits" }] });
        let r = parse(&serde_json::to_vec(&body).unwrap(), None).unwrap();
        assert!(encode("m", 1, &r, outputs()).is_err());
        // An output sent on request only, when named.
        let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1],
            "data": [0.0] }], "outputs": [{ "name": "neighbor_ids" }] });
        let r = parse(&serde_json::to_vec(&body).unwrap(), None).unwrap();
        assert!(asks_for(&r, "neighbor_ids") && !asks_for(&r, "label"));
        let v: Value =
            serde_json::from_slice(&encode("m", 1, &r, outputs()).unwrap().body).unwrap();
        assert_eq!(v["outputs"][0]["shape"], json!([2, 2]));
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_and_header_lengths_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            header in proptest::option::of("[0-9 ]{0,6}"),
        ) {
            let _ = parse(&body, header.as_deref());
        }

        #[test]
        fn arbitrary_binary_after_a_valid_header_never_panics(
            raw in proptest::collection::vec(any::<u8>(), 0..256),
            claimed in 0usize..300,
            n in 0i64..8,
        ) {
            let mut body = serde_json::to_vec(&json!({ "inputs": [{ "name": "image",
                "datatype": "BYTES", "shape": [n], "parameters": { "binary_data_size": claimed } }] }))
                .unwrap();
            let len = body.len().to_string();
            body.extend(raw);
            let _ = parse(&body, Some(&len));
        }
    }
}
