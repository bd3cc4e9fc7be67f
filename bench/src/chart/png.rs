//! A minimal PNG writer: 8-bit RGB, one IDAT chunk, zlib by `miniz_oxide` (PNG spec, ISO/IEC
//! 15948, sections 5 and 11). Only what the harness's charts need; nothing here reads PNGs.

/// The eight bytes every PNG file starts with (section 5.2).
pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Encodes `pixels` (`width * height` RGB triples, rows top to bottom) as a PNG file.
pub fn encode_rgb(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let row = width as usize * 3;
    assert_eq!(pixels.len(), row * height as usize, "pixel buffer size");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (truecolour), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // Each scanline is prefixed by its filter type; `Sub` (1) turns the long runs of one colour
    // a chart is made of into runs of zeros, which deflate shrinks to almost nothing.
    let mut filtered = Vec::with_capacity((row + 1) * height as usize);
    for line in pixels.chunks_exact(row) {
        filtered.push(1);
        for (i, byte) in line.iter().enumerate() {
            let left = if i >= 3 { line[i - 3] } else { 0 };
            filtered.push(byte.wrapping_sub(left));
        }
    }
    let compressed = miniz_oxide::deflate::compress_to_vec_zlib(&filtered, 9);
    let mut out = SIGNATURE.to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &compressed);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Appends one chunk: length, type, data, CRC-32 of type and data (section 5.3).
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 as PNG defines it (ISO 3309, reflected polynomial 0xEDB88320), bit by bit: the data is
/// a few tens of kilobytes, so a table would buy nothing.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a PNG into (type, data) chunks, checking each CRC.
    fn chunks(file: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(file[..8], SIGNATURE);
        let mut rest = &file[8..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = rest[4..8].try_into().unwrap();
            let data = rest[8..8 + len].to_vec();
            let crc = u32::from_be_bytes(rest[8 + len..12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&rest[4..8 + len]), "CRC of {kind:?}");
            out.push((kind, data));
            rest = &rest[12 + len..];
        }
        out
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        // The CRC-32 check value of "123456789" in every CRC catalogue.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn pixels_survive_filtering_and_compression() {
        let (width, height) = (7u32, 3u32);
        let pixels: Vec<u8> = (0..width * height * 3)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let file = encode_rgb(width, height, &pixels);
        let chunks = chunks(&file);
        let kinds: Vec<&[u8; 4]> = chunks.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"IHDR", b"IDAT", b"IEND"]);
        assert_eq!(chunks[0].1, [0, 0, 0, 7, 0, 0, 0, 3, 8, 2, 0, 0, 0]);
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&chunks[1].1).unwrap();
        let row = width as usize * 3;
        let mut decoded = Vec::new();
        for line in raw.chunks_exact(row + 1) {
            assert_eq!(line[0], 1, "Sub filter");
            let start = decoded.len();
            for (i, byte) in line[1..].iter().enumerate() {
                let left = if i >= 3 { decoded[start + i - 3] } else { 0u8 };
                decoded.push(byte.wrapping_add(left));
            }
        }
        assert_eq!(decoded, pixels);
    }
}
