//! The canonical encoding of an encryption context, bound to ciphertexts as AAD.
//!
//! `u32 BE count`, then for each entry in sorted key order: `u32 BE key length`, key
//! bytes, `u32 BE value length`, value bytes. Length prefixes make the encoding
//! injective: `{"ab":"c"}` and `{"a":"bc"}` encode differently, unlike the
//! concatenation some emulators use, under which one context decrypts the other's
//! ciphertexts.

use keyraft_types::EncryptionContext;

/// Encodes `ctx` canonically.
pub fn encode_context(ctx: &EncryptionContext) -> Vec<u8> {
    let size: usize = 4 + ctx
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
    for (k, v) in ctx {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixes_separate_keys_from_values() {
        let a: EncryptionContext = [("ab".to_string(), "c".to_string())].into();
        let b: EncryptionContext = [("a".to_string(), "bc".to_string())].into();
        assert_ne!(encode_context(&a), encode_context(&b));
        assert_eq!(encode_context(&EncryptionContext::new()), vec![0, 0, 0, 0]);
    }
}
