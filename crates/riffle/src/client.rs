//! A small HTTP client for the CLI commands that talk to a running server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// Where the token comes from: `--token`/`RIFFLE_TOKEN`, else
/// `<data-dir>/admin.token` if readable — the latter only for a server on
/// this machine (loopback), so the local admin token is never sent
/// elsewhere by accident.
pub fn resolve_token(explicit: Option<String>, data_dir: &Path, server: &str) -> Option<String> {
    if let Some(token) = explicit.filter(|t| !t.is_empty()) {
        return Some(token);
    }
    if !is_loopback_url(server) {
        return None;
    }
    let path: PathBuf = data_dir.join("admin.token");
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A server that accepts but never answers must not hang the CLI.
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64);
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("--ca-cert: cannot read {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("--ca-cert: {} is not a PEM certificate", path.display())
            })?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http: builder.build()?,
            token,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends a request and returns the JSON body, turning API errors into
    /// `anyhow` errors that carry the server's message.
    pub async fn send_json(&self, request: RequestBuilder) -> anyhow::Result<(StatusCode, Value)> {
        let response = request
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the server at {}: {e}", self.base))?;
        self.parse_response(response).await
    }

    pub async fn parse_response(
        &self,
        response: reqwest::Response,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let status = response.status();
        let bytes = response.bytes().await?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if !status.is_success() {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{} ({})", message, status);
        }
        Ok((status, body))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send_json(self.request(Method::GET, path)).await?.1)
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_token_file_is_only_used_for_loopback_servers() {
        assert!(super::is_loopback_url("http://127.0.0.1:8080"));
        assert!(super::is_loopback_url("https://localhost"));
        assert!(super::is_loopback_url("http://[::1]:9000"));
        assert!(!super::is_loopback_url("http://10.0.0.5:8080"));
        assert!(!super::is_loopback_url("https://riffle.example.com"));
    }
}
