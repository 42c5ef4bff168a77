//! IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), raw or gzip.
//!
//! The `mnist` crate only reads fixed file names with counts given up front and panics on
//! malformed files; a stage must instead report a bad file and exit, so the (tiny) format is
//! read here with every length checked.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Length of each dimension, as the header gives them (`[n, rows, cols]` for images).
    pub dims: Vec<usize>,
    /// The elements, row-major; exactly the product of `dims` bytes.
    pub data: Vec<u8>,
}

/// Reads an IDX file of `expected_ndims` dimensions with unsigned-byte elements. Gzip is
/// detected from the content, not the name.
pub fn read_idx(path: &Path, expected_ndims: usize) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| mlops_core::Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::idx(path, format!("corrupt or truncated gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, expected_ndims).map_err(|message| Error::idx(path, message))
}

fn parse_idx(bytes: &[u8], expected_ndims: usize) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "not an IDX file: {} bytes, shorter than the 4-byte magic number",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "not an IDX file: wrong magic number {:02x}{:02x}{:02x}{:02x} (expected 0000080{expected_ndims})",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "unsupported IDX element type 0x{:02x} (only unsigned byte, 0x08, holds images and labels)",
            bytes[2]
        ));
    }
    let ndims = bytes[3] as usize;
    if ndims != expected_ndims {
        return Err(format!(
            "IDX file has {ndims} dimensions, expected {expected_ndims} (images have 3, labels 1)"
        ));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err("truncated IDX header".to_string());
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let at = 4 + 4 * i;
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("IDX dimensions overflow")?;
    let actual = bytes.len() - header;
    if actual != expected {
        return Err(format!(
            "IDX header promises {expected} bytes of data ({dims:?}), file has {actual}: truncated or corrupt"
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Encodes an unsigned-byte IDX array (used by tests and fixture generators).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let parsed = parse_idx(&encode_idx(&[2, 3, 4], &data), 3).unwrap();
        assert_eq!(parsed.dims, vec![2, 3, 4]);
        assert_eq!(parsed.data, data);
    }

    #[test]
    fn rejects_bad_headers() {
        let good = encode_idx(&[3], &[1, 2, 3]);
        let mut magic = good.clone();
        magic[0] = 0x12;
        assert!(parse_idx(&magic, 1).unwrap_err().contains("magic"));
        assert!(parse_idx(&good, 3).unwrap_err().contains("dimensions"));
        assert!(parse_idx(&good[..good.len() - 1], 1)
            .unwrap_err()
            .contains("truncated"));
        assert!(parse_idx(&good[..6], 1).unwrap_err().contains("header"));
        let mut float = good.clone();
        float[2] = 0x0d;
        assert!(parse_idx(&float, 1).unwrap_err().contains("element type"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// Arbitrary bytes, and valid headers over arbitrary dimensions and bodies: an error or
        /// an array whose size matches its header, never a panic.
        #[test]
        fn parser_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            dims in proptest::collection::vec(0usize..5, 0..4),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            ndims in 0usize..4,
        ) {
            let _ = parse_idx(&bytes, ndims);
            let mut file = encode_idx(&dims, &[]);
            file.extend(&body);
            if let Ok(a) = parse_idx(&file, dims.len()) {
                proptest::prop_assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
            }
        }
    }
}
