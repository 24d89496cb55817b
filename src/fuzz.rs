//! Entry points for the fuzz targets (`fuzz/`): each hands arbitrary bytes to one decoder of
//! untrusted input, exactly as the daemon runs it, and returns nothing. A decoder may refuse
//! the input; it must never panic, hang or grow without bound.

/// The access-token check: any string as a bearer token.
pub fn access_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tokens = crate::auth::token::Tokens::new(b"fuzz-secret-fuzz-secret-fuzz-sec", 900, 86_400);
    let _ = tokens.verify(text);
}
