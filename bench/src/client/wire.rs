//! Hand-encoded HTTP/3 wire pieces, for requests quiche's encoder would refuse to send (tests of
//! how the proxy treats malformed input).

/// QUIC variable-length integer (RFC 9000 §16).
pub(super) fn push_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=63 => out.push(v as u8),
        64..=16_383 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        16_384..=1_073_741_823 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// HPACK/QPACK prefixed integer (RFC 7541 §5.1) with `prefix` bits and the given high bits.
fn push_prefixed_int(out: &mut Vec<u8>, mut v: u64, prefix: u32, high_bits: u8) {
    let max = (1u64 << prefix) - 1;
    if v < max {
        out.push(high_bits | v as u8);
        return;
    }
    out.push(high_bits | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A QPACK field section of literal field lines with literal names, no Huffman, no dynamic table
/// (RFC 9204 §4.5.6).
pub(super) fn encode_literal_field_section(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0, 0]; // Required Insert Count 0, Delta Base 0.
    for (name, value) in fields {
        push_prefixed_int(&mut out, name.len() as u64, 3, 0b0010_0000);
        out.extend_from_slice(name);
        push_prefixed_int(&mut out, value.len() as u64, 7, 0);
        out.extend_from_slice(value);
    }
    out
}
