//! Who may do what to which dataset topic.
//!
//! Publishing, pinning, scoping, rollouts and topic create/delete need a
//! token with the publish permission for the topic; the admin token holds
//! every permission. Consuming is open unless the topic is restricted: a topic is
//! restricted when some configured token lists it (by name or pattern)
//! under `consume`, or when it is encrypted — an encrypted payload is
//! decrypted only for an authorised consumer. Tokens are compared in
//! constant time against every candidate.

use crate::config::DatasetToken;
use riffle_core::ErrorCode;
use subtle::ConstantTimeEq;

use crate::error::{DatasetError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Publish,
    Consume,
}

impl Permission {
    fn as_str(self) -> &'static str {
        match self {
            Permission::Publish => "publish",
            Permission::Consume => "consume",
        }
    }
}

/// The actor recorded in the audit trail for the admin token.
pub const ADMIN_ACTOR: &str = "admin";
/// The actor for open (token-less) consumption.
pub const ANONYMOUS_ACTOR: &str = "anonymous";

#[derive(Clone)]
pub struct AccessPolicy {
    admin: String,
    tokens: Vec<DatasetToken>,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

fn pattern_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

impl AccessPolicy {
    pub fn new(admin_token: String, tokens: Vec<DatasetToken>) -> Self {
        AccessPolicy {
            admin: admin_token,
            tokens,
        }
    }

    /// Whether consuming `topic` needs a token.
    pub fn consume_restricted(&self, topic: &str, encrypted: bool) -> bool {
        encrypted
            || self
                .tokens
                .iter()
                .any(|t| t.consume.iter().any(|p| pattern_matches(p, topic)))
    }

    /// Checks `bearer` (the token from `Authorization: Bearer`, if any) and
    /// returns the actor name for the audit trail.
    pub fn authorize(
        &self,
        bearer: Option<&str>,
        topic: &str,
        permission: Permission,
        encrypted: bool,
    ) -> Result<String> {
        let open = permission == Permission::Consume && !self.consume_restricted(topic, encrypted);
        let Some(token) = bearer else {
            if open {
                return Ok(ANONYMOUS_ACTOR.into());
            }
            return Err(DatasetError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "authorization: {} on topic {topic:?} needs a bearer token",
                    permission.as_str()
                ),
            ));
        };
        let eq = |candidate: &str| bool::from(candidate.as_bytes().ct_eq(token.as_bytes()));
        // Compare against every candidate so timing does not reveal which
        // entry matched.
        let is_admin = eq(&self.admin);
        let mut matched: Option<&DatasetToken> = None;
        for candidate in &self.tokens {
            if eq(&candidate.token) {
                matched = Some(candidate);
            }
        }
        if is_admin {
            return Ok(ADMIN_ACTOR.into());
        }
        let granted = matched.filter(|t| {
            let patterns = match permission {
                Permission::Publish => &t.publish,
                Permission::Consume => &t.consume,
            };
            patterns.iter().any(|p| pattern_matches(p, topic))
        });
        match (granted, matched) {
            (Some(t), _) => Ok(t.name.clone()),
            // An unknown or unrelated token on an open topic still consumes.
            _ if open => Ok(ANONYMOUS_ACTOR.into()),
            (None, Some(t)) => Err(DatasetError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "authorization: token {:?} has no {} permission for topic {topic:?}",
                    t.name,
                    permission.as_str()
                ),
            )),
            (None, None) => Err(DatasetError::new(
                ErrorCode::PermissionDenied,
                "authorization: unknown token",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riffle_core::HasCode;

    fn policy() -> AccessPolicy {
        AccessPolicy::new(
            "admin-token-0123456789".into(),
            vec![
                DatasetToken {
                    name: "ci".into(),
                    token: "ci-token-0123456789".into(),
                    publish: vec!["models.*".into()],
                    consume: vec![],
                },
                DatasetToken {
                    name: "ranker".into(),
                    token: "ranker-token-0123456789".into(),
                    publish: vec![],
                    consume: vec!["models.secret".into()],
                },
            ],
        )
    }

    #[test]
    fn publish_needs_a_matching_token() {
        let p = policy();
        let code = |r: Result<String>| r.unwrap_err().code();
        assert_eq!(
            code(p.authorize(None, "models.a", Permission::Publish, false)),
            ErrorCode::Unauthenticated
        );
        assert_eq!(
            code(p.authorize(Some("wrong"), "models.a", Permission::Publish, false)),
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            code(p.authorize(
                Some("ci-token-0123456789"),
                "configs.a",
                Permission::Publish,
                false
            )),
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            p.authorize(
                Some("ci-token-0123456789"),
                "models.a",
                Permission::Publish,
                false
            )
            .unwrap(),
            "ci"
        );
        assert_eq!(
            p.authorize(
                Some("admin-token-0123456789"),
                "anything",
                Permission::Publish,
                false
            )
            .unwrap(),
            ADMIN_ACTOR
        );
    }

    #[test]
    fn consume_is_open_unless_restricted_or_encrypted() {
        let p = policy();
        assert_eq!(
            p.authorize(None, "models.a", Permission::Consume, false)
                .unwrap(),
            ANONYMOUS_ACTOR
        );
        assert!(p
            .authorize(None, "models.secret", Permission::Consume, false)
            .is_err());
        assert!(p
            .authorize(None, "models.a", Permission::Consume, true)
            .is_err());
        assert_eq!(
            p.authorize(
                Some("ranker-token-0123456789"),
                "models.secret",
                Permission::Consume,
                false
            )
            .unwrap(),
            "ranker"
        );
        assert!(p
            .authorize(
                Some("ci-token-0123456789"),
                "models.secret",
                Permission::Consume,
                false
            )
            .is_err());
    }
}
