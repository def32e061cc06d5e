//! Feature values.

use serde::Serialize;

/// One feature's value at an instant. `Null` when the entity has no event
/// the feature reads (a ratio over nothing, the age of a stream never seen
/// starting).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<String>),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            Value::Bool(v) => Some(f64::from(u8::from(*v))),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// The stored form of one entity's feature vector (an online store row's
/// value), format 1, little-endian:
///
/// ```text
/// magic "RFV" | format u8 = 1 | schema u64 | count u16 | count × value
/// value: tag u8 — 0 null | 1 bool (u8) | 2 int (i64) | 3 float (f64 bits)
///        | 4 str (u32 len, UTF-8) | 5 list (u16 n, n × (u32 len, UTF-8))
/// ```
///
/// `schema` fingerprints the feature names and aggregations in order
/// ([`schema_fingerprint`]), so a reader refuses a vector written for
/// another feature set instead of mislabelling its values.
pub const VECTOR_MAGIC: &[u8; 3] = b"RFV";
pub const VECTOR_FORMAT_V1: u8 = 1;

/// The fingerprint of an ordered list of (feature name, aggregation).
pub fn schema_fingerprint<'a>(features: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut text = String::new();
    for (name, aggregation) in features {
        text.push_str(name);
        text.push(':');
        text.push_str(aggregation);
        text.push(';');
    }
    crate::engine::event_hash(&text)
}

/// Appends the encoding of `values` (see [`VECTOR_MAGIC`]).
pub fn encode_vector(schema: u64, values: &[Value], out: &mut Vec<u8>) {
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    out.extend_from_slice(VECTOR_MAGIC);
    out.push(VECTOR_FORMAT_V1);
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&(values.len() as u16).to_le_bytes());
    for value in values {
        match value {
            Value::Null => out.push(0),
            Value::Bool(b) => {
                out.push(1);
                out.push(u8::from(*b));
            }
            Value::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => {
                out.push(4);
                put_str(out, s);
            }
            Value::List(items) => {
                out.push(5);
                out.extend_from_slice(&(items.len() as u16).to_le_bytes());
                for item in items {
                    put_str(out, item);
                }
            }
        }
    }
}

/// Decodes [`encode_vector`]'s output written for `schema`.
pub fn decode_vector(
    schema: u64,
    bytes: &[u8],
) -> Result<Vec<Value>, riffle_core::codec::FormatError> {
    use riffle_core::codec::Reader;
    let mut r = Reader::new(bytes);
    if r.array::<3>("magic")? != *VECTOR_MAGIC {
        return Err("not a feature vector (bad magic)".into());
    }
    let format = r.u8("format")?;
    if format != VECTOR_FORMAT_V1 {
        return Err(format!("unsupported feature vector format {format}").into());
    }
    let stored = r.u64("schema")?;
    if stored != schema {
        return Err(
            format!("written for feature set {stored:#018x}, read as {schema:#018x}").into(),
        );
    }
    let count = r.u16("count")?;
    let mut values = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let value = match r.u8("tag")? {
            0 => Value::Null,
            1 => Value::Bool(r.u8("bool")? != 0),
            2 => Value::Int(r.i64("int")?),
            3 => Value::Float(f64::from_bits(r.u64("float")?)),
            4 => {
                let len = r.u32("str length")?;
                Value::Str(r.str(u64::from(len), "str")?.to_owned())
            }
            5 => {
                let n = r.u16("list length")?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let len = r.u32("item length")?;
                    items.push(r.str(u64::from(len), "item")?.to_owned());
                }
                Value::List(items)
            }
            tag => return Err(format!("unknown value tag {tag}").into()),
        };
        values.push(value);
    }
    if !r.is_empty() {
        return Err(format!("{} trailing bytes", r.remaining()).into());
    }
    Ok(values)
}
