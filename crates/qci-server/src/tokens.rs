//! The host's bearer tokens: the relay's job tokens and the operator token
//! of the job API. The host keeps only their SHA-256, so a copy of the
//! database (or of the host's memory) posts nothing, and compares hashes in
//! constant time.
//!
//! A job token is 32 random bytes, given to exactly one job's file. It is
//! good for that job only, and only until the job has a final state.

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new job token and the hash the host keeps of it.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS gives random bytes");
    let token = crate::webhook::hex(&bytes);
    let hash = hash(&token);
    (token, hash)
}

/// The hash the host keeps of a token (hex SHA-256).
pub fn hash(token: &str) -> String {
    crate::webhook::hex(&Sha256::digest(token.as_bytes()))
}

/// Whether two hashes are the same, in constant time.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a request carries the token whose hash is `expected`.
pub fn bears(headers: &HeaderMap, expected: &str) -> bool {
    bearer(headers).is_some_and(|given| same_hash(&hash(given), expected))
}
