//! PEM text encoding of DER objects (public keys, certificates).

use base64::Engine as _;

/// PEM (RFC 7468): `-----BEGIN {label}-----\n`, standard base64 with padding in lines of 64
/// characters, `-----END {label}-----\n`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pem_lines_and_round_trip() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = pem_encode("PUBLIC KEY", &der);
        assert!(pem.ends_with("-----\n"));
        let lines: Vec<&str> = pem.lines().collect();
        let (first, body, last) = (lines[0], &lines[1..lines.len() - 1], lines[lines.len() - 1]);
        assert_eq!(
            (first, last),
            ("-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----")
        );
        // 1000 bytes are 1336 base64 characters: 20 full lines and one of 56 ending in '='.
        assert_eq!(body.len(), 21);
        assert!(body[..20].iter().all(|l| l.len() == 64));
        assert_eq!((body[20].len(), body[20].ends_with('=')), (56, true));
        let decoded = base64::engine::general_purpose::STANDARD.decode(body.concat());
        assert_eq!(decoded.unwrap(), der);
        assert_eq!(pem_encode("X", &[]), "-----BEGIN X-----\n-----END X-----\n");
        assert_eq!(
            pem_encode("X", &[0u8; 48]).lines().nth(1).map(str::len),
            Some(64)
        );
    }
}
