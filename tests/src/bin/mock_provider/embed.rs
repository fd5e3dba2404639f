//! Deterministic embeddings: a signed bag of hashed words, L2-normalized, so texts that share
//! words have a higher cosine similarity, the property retrieval and semantic-cache tests rely on.

/// The vector for `text` with `dims` components (zero when the text has no words).
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut vector = vec![0.0_f32; dims];
    if dims == 0 {
        return vector;
    }
    for word in text.split_whitespace() {
        let word = word
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase();
        if word.is_empty() {
            continue;
        }
        let hash = fnv1a(word.as_bytes());
        // Random signs keep unrelated texts near orthogonal instead of all-positive.
        let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
        // The remainder is below `dims`, so converting it back to usize cannot fail.
        let slot = usize::try_from(hash % dims as u64).unwrap_or_default();
        vector[slot] += sign;
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// FNV-1a: tiny and stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// OpenAI's `encoding_format: "base64"`: the little-endian f32 bytes, standard base64.
pub fn to_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64(&bytes)
}

/// Standard-alphabet base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(
                    ALPHABET[((group >> (18 - 6 * i)) & 0x3f) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected, "input {input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn base64_embedding_is_little_endian_f32() {
        // 1.0f32 is 0x3f800000, stored little-endian as 00 00 80 3f.
        assert_eq!(to_base64(&[1.0]), "AACAPw==");
        assert_eq!(to_base64(&[1.0, -2.0]), "AACAPwAAAMA=");
    }

    #[test]
    fn embeddings_are_deterministic_and_unit_length() {
        let a = embed("The quick brown fox", 8);
        assert_eq!(a, embed("the quick, brown FOX!", 8));
        assert_eq!(a.len(), 8);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-6);
        assert_eq!(embed("   ", 4), vec![0.0; 4]);
    }

    #[test]
    fn shared_words_mean_higher_similarity() {
        let base = embed("the cat sat on the mat", 64);
        let near = embed("the cat sat on a rug", 64);
        let far = embed("quantum chromodynamics lecture notes", 64);
        assert!(cosine(&base, &near) > cosine(&base, &far));
        assert!(cosine(&base, &near) > 0.5);
    }
}
