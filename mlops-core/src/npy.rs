//! Typed `.npy` I/O (via `ndarray-npy`) with errors that name the file, plus a header reader
//! that reports an array's dtype and shape without loading its data.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Element types stored in our arrays, with numpy's names for them.
pub trait NpyElement: ndarray_npy::WritableElement + ndarray_npy::ReadableElement {
    /// numpy's dtype name, as recorded in manifests.
    const NAME: &'static str;
    /// The little-endian `descr` string in an `.npy` header.
    const DESCR: &'static str;
}

macro_rules! npy_element {
    ($t:ty, $name:literal, $descr:literal) => {
        impl NpyElement for $t {
            const NAME: &'static str = $name;
            const DESCR: &'static str = $descr;
        }
    };
}
npy_element!(f32, "float32", "<f4");
npy_element!(f64, "float64", "<f8");
npy_element!(i64, "int64", "<i8");
npy_element!(i32, "int32", "<i4");
npy_element!(u8, "uint8", "|u1");

/// Reads a whole `.npy` file as an array of the given element type and dimensionality.
pub fn read<A: NpyElement, D: ndarray::Dimension>(path: &Path) -> Result<ndarray::Array<A, D>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    <ndarray::Array<A, D> as ndarray_npy::ReadNpyExt>::read_npy(reader).map_err(|source| {
        Error::ReadNpy {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The parts of an `.npy` header that say what the array is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// numpy's type string for the elements, byte order included (`<f4`, `<i8`, `|u1`, ...).
    pub descr: String,
    /// Whether the data is stored column-major (Fortran order) rather than row-major.
    pub fortran_order: bool,
    /// Length of each dimension; empty for a scalar.
    pub shape: Vec<usize>,
}

impl NpyHeader {
    /// numpy's dtype name for the header's `descr`, or the raw `descr` for types we do not name.
    pub fn dtype_name(&self) -> String {
        match self.descr.as_str() {
            "<f4" => "float32",
            "<f8" => "float64",
            "<i8" => "int64",
            "<i4" => "int32",
            "|u1" => "uint8",
            other => other,
        }
        .to_string()
    }
}

/// Reads only the header of an `.npy` file (format versions 1-3).
pub fn read_header(path: &Path) -> Result<NpyHeader> {
    let bad = |message: String| Error::invalid(path, format!("not a valid .npy file: {message}"));
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // The preamble says how long the header is; read just that much, never the data.
    let mut start = vec![0u8; 12];
    let mut got = 0;
    while got < start.len() {
        match file.read(&mut start[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    start.truncate(got);
    let total = header_end(&start).map_err(bad)?;
    let mut bytes = start;
    if total > bytes.len() {
        let mut rest = vec![0u8; total - bytes.len()];
        file.read_exact(&mut rest)
            .map_err(|_| bad("truncated header".into()))?;
        bytes.extend(rest);
    }
    parse_header(&bytes).map_err(bad)
}

/// Where the header of an `.npy` file starting with `bytes` ends (preamble included).
fn header_end(bytes: &[u8]) -> std::result::Result<usize, String> {
    if bytes.len() < 8 {
        return Err("shorter than the 8-byte preamble".into());
    }
    if &bytes[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (len_bytes, header_len) = match bytes[6] {
        1 if bytes.len() >= 10 => (2, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 if bytes.len() >= 12 => (
            4,
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        ),
        1..=3 => return Err("truncated header".into()),
        v => return Err(format!("unsupported format version {v}")),
    };
    if header_len > 1 << 20 {
        return Err("header longer than 1 MiB".into());
    }
    Ok(8 + len_bytes + header_len)
}

/// Parses the preamble and header at the start of an `.npy` file. Never panics, whatever the
/// bytes (fuzzed in the tests below).
pub fn parse_header(bytes: &[u8]) -> std::result::Result<NpyHeader, String> {
    let end = header_end(bytes)?;
    let start = if bytes[6] == 1 { 10 } else { 12 };
    let text = bytes
        .get(start..end)
        .ok_or_else(|| "truncated header".to_string())?;
    let text = String::from_utf8_lossy(text);
    parse_header_dict(&text).ok_or_else(|| format!("unparseable header {:?}", text.trim()))
}

fn parse_header_dict(text: &str) -> Option<NpyHeader> {
    let value_after = |key: &str| -> Option<&str> {
        let at = text.find(&format!("'{key}'"))? + key.len() + 2;
        Some(text.get(at..)?.trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = value_after("descr")?;
    // Slice by the quote's own width: a multi-byte character there must not split.
    let quote = descr.chars().next().filter(|q| *q == '\'' || *q == '"')?;
    let descr = descr[quote.len_utf8()..].split(quote).next()?.to_string();
    let fortran_order = value_after("fortran_order")?.starts_with("True");
    let shape_text = value_after("shape")?.strip_prefix('(')?;
    let shape_text = shape_text.get(..shape_text.find(')')?)?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse().ok())
        .collect::<Option<Vec<usize>>>()?;
    Some(NpyHeader {
        descr,
        fortran_order,
        shape,
    })
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    /// Wraps `inner`, with nothing hashed or counted yet.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Flushes and returns the hex sha256 and byte count of everything written.
    pub fn finish(mut self) -> std::io::Result<(String, u64)> {
        self.inner.flush()?;
        Ok((hex::encode(self.hasher.finalize()), self.bytes))
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_headers() {
        let h = parse_header_dict(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (5000, 1, 28, 28), }",
        )
        .unwrap();
        assert_eq!(h.descr, "<f4");
        assert!(!h.fortran_order);
        assert_eq!(h.shape, vec![5000, 1, 28, 28]);
        let h =
            parse_header_dict("{'descr': '<i8', 'fortran_order': True, 'shape': (7,), }").unwrap();
        assert_eq!(h.shape, vec![7]);
        assert!(h.fortran_order);
        assert_eq!(h.dtype_name(), "int64");
        assert!(parse_header_dict("{'descr': '<i8'}").is_none());
    }

    #[test]
    fn multibyte_character_where_the_quote_belongs_is_an_error() {
        assert!(parse_header_dict(
            "{'descr': \u{e9}<f4', 'fortran_order': False, 'shape': (1,), }"
        )
        .is_none());
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        let dict: &[u8] = b"{'descr': \xff<f4', 'fortran_order': False, 'shape': (1,), }";
        file.extend((dict.len() as u16).to_le_bytes());
        file.extend(dict);
        assert!(parse_header(&file).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// Arbitrary bytes after a valid preamble, and arbitrary dictionaries: never a panic.
        #[test]
        fn header_parser_never_panics(
            version in 0u8..5,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            dict in "\\PC{0,80}",
        ) {
            let mut file = b"\x93NUMPY".to_vec();
            file.extend([version, 0]);
            file.extend((body.len() as u16).to_le_bytes());
            file.extend(&body);
            let _ = parse_header(&file);
            let _ = parse_header(&body);
            let _ = parse_header_dict(&dict);
            let _ = parse_header_dict(&format!("{{'descr': {dict}, 'fortran_order': False, 'shape': ({dict}), }}"));
        }
    }

    #[test]
    fn header_of_written_file_matches() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = crate::OutputDir::create(dir.path()).unwrap();
        let a = ndarray::Array4::<f32>::zeros((3, 1, 4, 5));
        let entry = out.write_npy("a.npy", &a).unwrap();
        let h = read_header(&out.staged_path("a.npy")).unwrap();
        assert_eq!(h.shape, vec![3, 1, 4, 5]);
        assert_eq!(h.dtype_name(), entry.dtype.unwrap());
        let back: ndarray::Array4<f32> = read(&out.staged_path("a.npy")).unwrap();
        assert_eq!(back, a);
        assert!(read::<i64, ndarray::Ix1>(&out.staged_path("a.npy")).is_err());
    }
}
