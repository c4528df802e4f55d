//! AWS Signature Version 4 verification for the Kinesis HTTP API.
//!
//! With access keys configured, every request must carry an `Authorization` header signed with
//! one of them, for this node's region and the `kinesis` service, dated within 5 minutes of
//! the node's clock. The refusals use the names Kinesis answers with.

use axum::http::{HeaderMap, Method, Uri};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::KinesisError;
use millrace_security::access_sig::KeyStore;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "kinesis";
/// Allowed difference between the request's date and the node's clock.
pub const CLOCK_SKEW_MAX_SECS: i64 = 5 * 60;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn incomplete(message: impl Into<String>) -> KinesisError {
    KinesisError::client("IncompleteSignatureException", message)
}

fn parse_authorization(header: &str) -> Result<Authorization<'_>, KinesisError> {
    let rest = header
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| incomplete(format!("Authorization header must start with {ALGORITHM}")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let missing =
        |what: &str| incomplete(format!("Authorization header requires '{what}' parameter"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete(format!(
            "Credential {credential:?} must be KEY_ID/DATE/REGION/SERVICE/aws4_request"
        )));
    };
    Ok(Authorization {
        key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// `20261126T085500Z` → epoch seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

/// RFC 3986 encoding as SigV4 wants it (unreserved characters kept).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Header values trimmed, inner runs of spaces collapsed, repeated headers joined by commas.
fn canonical_header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Everything a signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    fn canonical_request(&self, signed_headers: &[&str]) -> Result<String, KinesisError> {
        let mut canonical_headers = String::new();
        for name in signed_headers {
            // Over HTTP/2 the host travels as the `:authority` pseudo-header, in the URI.
            let authority = || {
                (*name == "host")
                    .then(|| self.uri.authority().map(|a| a.as_str().to_string()))
                    .flatten()
            };
            let value = canonical_header_value(self.headers, name)
                .or_else(authority)
                .ok_or_else(|| {
                    incomplete(format!(
                        "SignedHeaders names {name}, which the request lacks"
                    ))
                })?;
            canonical_headers.push_str(&format!("{name}:{value}\n"));
        }
        // The body's hash is always computed: a request's `X-Amz-Content-SHA256` (which need
        // not be signed) must match it, else a captured signature would carry another body.
        let payload_hash = sha256_hex(self.body);
        if let Some(v) = self.headers.get("x-amz-content-sha256") {
            if !v.as_bytes().eq_ignore_ascii_case(payload_hash.as_bytes()) {
                return Err(KinesisError::client(
                    "InvalidSignatureException",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
        }
        Ok(format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method.as_str(),
            uri_encode(self.uri.path(), true),
            canonical_query(self.uri.query()),
            canonical_headers,
            signed_headers.join(";"),
            payload_hash
        ))
    }
}

/// The signature of a request (hex), given the secret key, the request's date-time
/// (`YYYYMMDDTHHMMSSZ`), the credential scope and its signed headers.
fn signature(
    req: &SignedRequest<'_>,
    secret: &str,
    amz_date: &str,
    auth: &Authorization<'_>,
) -> Result<String, KinesisError> {
    let canonical = req.canonical_request(&auth.signed_headers)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k_region = hmac(&k_date, auth.region.as_bytes());
    let k_service = hmac(&k_region, auth.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    Ok(hex::encode(hmac(&k_signing, string_to_sign.as_bytes())))
}

/// `secs` (since the Unix epoch) as SigV4's `YYYYMMDD'T'HHMMSS'Z'`.
pub fn amz_date(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace(['-', ':'], "")
}

/// Signs a request as an AWS SDK does, with `key_id`/`secret` for `region` and the `kinesis`
/// service at `now_secs`: adds `X-Amz-Date` and the `Authorization` header, signing every
/// header the request carries (which must include `host`). For tools and tests that call the
/// node's HTTP port without an SDK.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    key_id: &str,
    secret: &str,
    region: &str,
    now_secs: i64,
) {
    let amz_date = amz_date(now_secs);
    if let Ok(v) = amz_date.parse() {
        headers.insert("x-amz-date", v);
    }
    let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let auth = Authorization {
        key_id,
        date: &amz_date[..8],
        region,
        service: SERVICE,
        signed_headers: names,
        signature: "",
    };
    let req = SignedRequest {
        method,
        uri,
        headers,
        body,
    };
    let Ok(sig) = signature(&req, secret, &amz_date, &auth) else {
        return;
    };
    let value = format!(
        "{ALGORITHM} Credential={key_id}/{}/{region}/{SERVICE}/aws4_request, SignedHeaders={}, Signature={sig}",
        auth.date,
        auth.signed_headers.join(";")
    );
    if let Ok(v) = value.parse() {
        headers.insert("authorization", v);
    }
}

/// Checks a request's signature against the keys; answers the access key id that signed it.
/// When no key is enforced, accepts anything (and answers `None`).
pub fn verify(
    keys: &impl KeyStore,
    region: &str,
    req: &SignedRequest<'_>,
    now_secs: i64,
) -> Result<Option<String>, KinesisError> {
    if !keys.enforced() {
        return Ok(None);
    }
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let Some(auth_header) = header("authorization") else {
        return Err(KinesisError::client(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let auth = parse_authorization(auth_header)?;
    let amz_date = header("x-amz-date")
        .ok_or_else(|| incomplete("the request must carry an X-Amz-Date header"))?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        incomplete(format!(
            "X-Amz-Date {amz_date:?} is not YYYYMMDD'T'HHMMSS'Z'"
        ))
    })?;
    if !auth.signed_headers.contains(&"host") {
        return Err(incomplete("SignedHeaders must include host"));
    }
    let Some(secret) = keys.secret(auth.key_id) else {
        return Err(KinesisError::client(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    if !amz_date.starts_with(auth.date) {
        return Err(KinesisError::client(
            "InvalidSignatureException",
            format!("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'", auth.date, &amz_date[..8]),
        ));
    }
    if auth.region != region || auth.service != SERVICE {
        return Err(KinesisError::client(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid region ('{region}') and service ('{SERVICE}'), not '{}' and '{}'",
                auth.region, auth.service
            ),
        ));
    }
    if (now_secs - signed_at).abs() > CLOCK_SKEW_MAX_SECS {
        return Err(KinesisError::client(
            "InvalidSignatureException",
            format!(
                "Signature expired: {amz_date} is more than {} minutes from the server's time",
                CLOCK_SKEW_MAX_SECS / 60
            ),
        ));
    }
    let expected = signature(req, &secret, amz_date, &auth)?;
    // Constant-time comparison of the hex strings.
    let same = expected.len() == auth.signature.len()
        && expected
            .bytes()
            .zip(auth.signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(Some(auth.key_id.to_string()))
    } else {
        Err(KinesisError::client(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::config::AccessKeys;
    use axum::http::HeaderValue;

    /// AWS's published example ("Create a signed AWS API request", IAM ListUsers).
    fn example() -> (Method, Uri, HeaderMap) {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        headers.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let uri: Uri = "/?Action=ListUsers&Version=2010-05-08".parse().unwrap();
        (Method::GET, uri, headers)
    }

    #[test]
    fn matches_the_published_aws_example() {
        let (method, uri, headers) = example();
        let req = SignedRequest {
            method: &method,
            uri: &uri,
            headers: &headers,
            body: b"",
        };
        let auth = Authorization {
            key_id: "AKIDEXAMPLE",
            date: "20150830",
            region: "us-east-1",
            service: "iam",
            signed_headers: vec!["content-type", "host", "x-amz-date"],
            signature: "",
        };
        let sig = signature(
            &req,
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830T123600Z",
            &auth,
        )
        .unwrap();
        assert_eq!(
            sig,
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    fn signed(secret: &str, date: &str) -> (Method, Uri, HeaderMap, Vec<u8>) {
        let method = Method::POST;
        let uri: Uri = "/".parse().unwrap();
        let body = br#"{"StreamName":"s"}"#.to_vec();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:4567"));
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("Kinesis_20131202.ListStreams"),
        );
        let at = parse_amz_date(date).unwrap();
        sign(
            &method,
            &uri,
            &mut headers,
            &body,
            "AKID",
            secret,
            "us-east-1",
            at,
        );
        assert_eq!(headers["x-amz-date"], date);
        (method, uri, headers, body)
    }

    #[test]
    fn verification_accepts_good_and_refuses_bad_signatures() {
        let keys = AccessKeys::parse("AKID:secret").unwrap();
        let now = parse_amz_date("20261126T085500Z").unwrap();
        let check = |(m, u, h, b): &(Method, Uri, HeaderMap, Vec<u8>), now: i64| {
            let req = SignedRequest {
                method: m,
                uri: u,
                headers: h,
                body: b,
            };
            verify(&keys, "us-east-1", &req, now).map_err(|e| e.type_name.into_owned())
        };
        let good = signed("secret", "20261126T085500Z");
        assert_eq!(check(&good, now), Ok(Some("AKID".to_string())));
        assert_eq!(
            check(&signed("wrong", "20261126T085500Z"), now),
            Err("InvalidSignatureException".to_string())
        );
        // Clock skew beyond 5 minutes.
        assert_eq!(
            check(&good, now + 301),
            Err("InvalidSignatureException".to_string())
        );
        assert_eq!(check(&good, now - 299), Ok(Some("AKID".to_string())));
        // A tampered body.
        let mut tampered = good.clone();
        tampered.3 = br#"{"StreamName":"t"}"#.to_vec();
        assert_eq!(
            check(&tampered, now),
            Err("InvalidSignatureException".to_string())
        );
        // A tampered body that claims, in an unsigned X-Amz-Content-SHA256, the hash of the
        // body that was signed.
        tampered.2.insert(
            "x-amz-content-sha256",
            HeaderValue::from_str(&sha256_hex(&good.3)).unwrap(),
        );
        assert_eq!(
            check(&tampered, now),
            Err("InvalidSignatureException".to_string())
        );
        // The header with the body's own hash is fine.
        let mut declared = good.clone();
        declared.2.insert(
            "x-amz-content-sha256",
            HeaderValue::from_str(&sha256_hex(&good.3)).unwrap(),
        );
        assert_eq!(check(&declared, now), Ok(Some("AKID".to_string())));
        // Over HTTP/2 the signed host is the URI's authority.
        let mut h2 = good.clone();
        h2.2.remove("host");
        h2.1 = "http://127.0.0.1:4567/".parse().unwrap();
        assert_eq!(check(&h2, now), Ok(Some("AKID".to_string())));
        // Unknown key, missing header.
        let other = AccessKeys::parse("OTHER:secret").unwrap();
        let req = SignedRequest {
            method: &good.0,
            uri: &good.1,
            headers: &good.2,
            body: &good.3,
        };
        assert_eq!(
            verify(&other, "us-east-1", &req, now)
                .unwrap_err()
                .type_name,
            "UnrecognizedClientException"
        );
        let mut bare = good.clone();
        bare.2.remove("authorization");
        assert_eq!(
            check(&bare, now),
            Err("MissingAuthenticationTokenException".to_string())
        );
        // No keys configured: anything goes.
        let req = SignedRequest {
            method: &bare.0,
            uri: &bare.1,
            headers: &bare.2,
            body: &bare.3,
        };
        assert_eq!(
            verify(&AccessKeys::default(), "us-east-1", &req, now),
            Ok(None)
        );
    }

    #[test]
    fn amz_dates_parse() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30"), None);
    }
}
