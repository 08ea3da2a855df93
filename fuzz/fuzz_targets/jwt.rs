//! JWT verification as `/ws` does it (`wire::auth`, HS256, fixed secret).
//!
//! Input: a mode byte, then text. Mode even: the text is the token as sent (any bytes a
//! client can put in a header). Mode odd: the text is `header JSON \n claims JSON` (or only
//! claims, under `{"alg":"HS256","typ":"JWT"}`), base64url-encoded and signed with the
//! server's secret, so that the fuzzer reaches header and claims parsing and the time checks
//! behind the signature.
//! The function is `targets::jwt` of the library (the test suite runs it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sokdo_engine::fuzz::targets::jwt(data));
