//! JWT verification as `/ws` does it (`wire::auth`, HS256, fixed secret).
//!
//! Input: a mode byte, then text. Mode even: the text is the token as sent (any bytes a
//! client can put in a header). Mode odd: the text is `header JSON \n claims JSON` (or only
//! claims, under `{"alg":"HS256","typ":"JWT"}`), base64url-encoded and signed with the
//! server's secret, so that the fuzzer reaches header and claims parsing and the time checks
//! behind the signature.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use sokdo_engine::fuzz::{jwt, JWT_SECRET};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if mode % 2 == 0 {
        let _ = jwt(&text);
        return;
    }
    let (header, claims) = match text.split_once('\n') {
        Some((h, c)) => (h, c),
        None => (r#"{"alg":"HS256","typ":"JWT"}"#, &*text),
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signs any message");
    let _ = jwt(&format!("{message}.{signature}"));
});
