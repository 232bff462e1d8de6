//! The queued request: OpenFaaS's `QueueRequest` JSON field names (`Header`, `Host`, `Body` as
//! base64, `Method`, `Path`, `QueryString`, `Function`, `CallbackUrl`) plus `CallId`,
//! `EnqueuedAt` and `Attempt`. `CallbackUrl` is read either as a string or as the URL object
//! OpenFaaS's Go code writes.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One asynchronous call, as stored in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRequest {
    /// Request headers (every value of each).
    #[serde(rename = "Header", default)]
    pub header: BTreeMap<String, Vec<String>>,
    /// The `Host` the caller used.
    #[serde(rename = "Host", default)]
    pub host: String,
    /// The request body.
    #[serde(
        rename = "Body",
        default,
        serialize_with = "to_base64",
        deserialize_with = "from_base64"
    )]
    pub body: Vec<u8>,
    /// Method.
    #[serde(rename = "Method", default)]
    pub method: String,
    /// Path below the function (`/` when none).
    #[serde(rename = "Path", default)]
    pub path: String,
    /// Query string, without `?`.
    #[serde(rename = "QueryString", default)]
    pub query_string: String,
    /// The function.
    #[serde(rename = "Function")]
    pub function: String,
    /// Where the result goes.
    #[serde(
        rename = "CallbackUrl",
        default,
        deserialize_with = "callback_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_url: Option<String>,
    /// The call id.
    #[serde(rename = "CallId")]
    pub call_id: String,
    /// When it was accepted, Unix milliseconds.
    #[serde(rename = "EnqueuedAt", default)]
    pub enqueued_at: u64,
    /// Attempts made so far.
    #[serde(rename = "Attempt", default)]
    pub attempt: u32,
}

fn to_base64<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(body))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    match text {
        None => Ok(Vec::new()),
        Some(t) => base64::engine::general_purpose::STANDARD
            .decode(t.as_bytes())
            .map_err(serde::de::Error::custom),
    }
}

/// Go's `url.URL`, as `encoding/json` writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GoUrl {
    /// `http`, `https`.
    #[serde(rename = "Scheme")]
    scheme: String,
    /// `host[:port]`.
    #[serde(rename = "Host")]
    host: String,
    /// Path.
    #[serde(rename = "Path")]
    path: String,
    /// Query, without `?`.
    #[serde(rename = "RawQuery")]
    raw_query: String,
    /// Opaque form (`scheme:opaque`).
    #[serde(rename = "Opaque")]
    opaque: String,
}

/// `CallbackUrl` as a string, as a Go URL object, or null.
fn callback_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Object(GoUrl),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::Text(t)) if t.is_empty() => None,
        Some(Either::Text(t)) => Some(t),
        Some(Either::Object(u)) if u.scheme.is_empty() => None,
        Some(Either::Object(u)) if !u.opaque.is_empty() => {
            Some(format!("{}:{}", u.scheme, u.opaque))
        }
        Some(Either::Object(u)) => {
            let mut s = format!("{}://{}{}", u.scheme, u.host, u.path);
            if !u.raw_query.is_empty() {
                s.push('?');
                s.push_str(&u.raw_query);
            }
            Some(s)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_openfaas_messages() {
        let msg = QueueRequest {
            header: [("X-A".to_string(), vec!["1".to_string()])].into(),
            host: "gw".into(),
            body: b"hello".to_vec(),
            method: "POST".into(),
            path: "/x".into(),
            query_string: "a=1".into(),
            function: "echo".into(),
            callback_url: Some("http://cb:9000/hook".into()),
            call_id: "c1".into(),
            enqueued_at: 5,
            attempt: 0,
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert!(json.contains(r#""Body":"aGVsbG8=""#), "{json}");
        assert_eq!(serde_json::from_str::<QueueRequest>(&json).unwrap(), msg);

        // As OpenFaaS's gateway writes it: the callback URL as a Go url.URL object.
        let go = r#"{"Header":{"X-Call-Id":["c2"]},"Host":"gw:8080","Body":null,"Method":"POST",
            "Path":"","QueryString":"","Function":"figlet","CallId":"c2",
            "CallbackUrl":{"Scheme":"http","Opaque":"","User":null,"Host":"requestbin:80",
            "Path":"/r/abc","RawPath":"","ForceQuery":false,"RawQuery":"x=1","Fragment":""}}"#;
        let m: QueueRequest = serde_json::from_str(go).unwrap();
        assert_eq!(
            m.callback_url.as_deref(),
            Some("http://requestbin:80/r/abc?x=1")
        );
        assert!(m.body.is_empty());
        let none: QueueRequest =
            serde_json::from_str(r#"{"Function":"f","CallId":"c","CallbackUrl":null}"#).unwrap();
        assert_eq!(none.callback_url, None);
    }
}
