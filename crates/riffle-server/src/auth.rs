//! Bearer tokens. Three permissions: admin (topic create/delete and everything
//! else), ingest (POST /v1/events) and read (topic reads, group offsets).
//! Ingest and read are open unless tokens are configured for them. With no
//! admin token configured, one is generated on first start into
//! `<data-dir>/admin.token` (mode 0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::http::HeaderMap;
use riffle_core::config::AuthConfig;
use riffle_core::ErrorCode;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::rest::extract::bearer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Admin,
    Ingest,
    Read,
}

#[derive(Clone)]
pub struct Auth {
    admin: String,
    ingest: Vec<String>,
    read: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// Reads the admin token file, or creates it with a fresh random token.
/// Returns the token and whether it was generated now.
pub fn load_or_create_admin_token(path: &Path) -> std::io::Result<(String, bool)> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let token = existing.trim().to_string();
        if !token.is_empty() {
            return Ok((token, false));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok((token, true))
}

impl Auth {
    pub fn new(config: &AuthConfig, admin_token: String) -> Self {
        Auth {
            admin: admin_token,
            ingest: config.ingest_tokens.clone(),
            read: config.read_tokens.clone(),
        }
    }

    /// Checks the `Authorization: Bearer` header for a permission.
    pub fn check(&self, headers: &HeaderMap, permission: Permission) -> Result<(), ApiError> {
        let open = match permission {
            Permission::Admin => false,
            Permission::Ingest => self.ingest.is_empty(),
            Permission::Read => self.read.is_empty(),
        };
        if open {
            return Ok(());
        }
        let Some(token) = bearer(headers)? else {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "authorization: missing bearer token",
            ));
        };
        if self.allows(token, permission) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("authorization: token does not grant the {permission:?} permission")
                    .to_lowercase(),
            ))
        }
    }

    fn allows(&self, token: &str, permission: Permission) -> bool {
        let eq = |a: &str| bool::from(a.as_bytes().ct_eq(token.as_bytes()));
        // Compare against every candidate so timing does not reveal which
        // list matched.
        let admin = eq(&self.admin);
        let ingest = self.ingest.iter().fold(false, |acc, t| acc | eq(t));
        let read = self.read.iter().fold(false, |acc, t| acc | eq(t));
        match permission {
            Permission::Admin => admin,
            Permission::Ingest => admin | ingest,
            Permission::Read => admin | read,
        }
    }

    /// For gRPC metadata (`authorization: Bearer …`).
    pub fn check_grpc(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        permission: Permission,
    ) -> Result<(), tonic::Status> {
        let mut headers = HeaderMap::new();
        if let Some(v) = metadata.get("authorization").and_then(|v| v.to_str().ok()) {
            if let Ok(value) = v.parse() {
                headers.insert(axum::http::header::AUTHORIZATION, value);
            }
        }
        self.check(&headers, permission)
            .map_err(tonic::Status::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn permissions() {
        let config = AuthConfig {
            admin_token: String::new(),
            ingest_tokens: vec!["ing".into()],
            read_tokens: vec![],
        };
        let auth = Auth::new(&config, "adm".into());
        assert!(
            auth.check(&HeaderMap::new(), Permission::Read).is_ok(),
            "reads open"
        );
        assert_eq!(
            auth.check(&HeaderMap::new(), Permission::Ingest)
                .unwrap_err()
                .code,
            ErrorCode::Unauthenticated
        );
        assert!(auth.check(&headers("ing"), Permission::Ingest).is_ok());
        assert!(auth.check(&headers("adm"), Permission::Ingest).is_ok());
        assert_eq!(
            auth.check(&headers("ing"), Permission::Admin)
                .unwrap_err()
                .code,
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            auth.check(&headers("nope"), Permission::Admin)
                .unwrap_err()
                .code,
            ErrorCode::PermissionDenied
        );
        assert!(auth.check(&headers("adm"), Permission::Admin).is_ok());
    }

    #[test]
    fn admin_token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let (token, created) = load_or_create_admin_token(&path).unwrap();
        assert!(created && token.len() == 64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, created) = load_or_create_admin_token(&path).unwrap();
        assert!(!created);
        assert_eq!(again, token);
    }
}
