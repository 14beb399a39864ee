//! Who is calling, and what they may do. In AWS the HTTP API's Cognito JWT authorizer has already checked the
//! token (signature, issuer, audience, expiry) before the function runs; the function reads the claims it passed
//! on from the request context. Reading needs any signed-in user; a change (any method but GET and HEAD) needs a
//! member of the [`ADMIN_GROUP`] Cognito group or a token with the [`WRITE_SCOPE`] scope, else 403. No claims at
//! all is a 401. Locally the runner has no authorizer: it attaches [`Caller::local_admin`] to every request.

use std::collections::HashMap;

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lambda_http::request::RequestContext;

use crate::problem::Problem;

pub use clickpacer::domain::access::{ADMIN_GROUP, WRITE_SCOPE};

/// The signed-in user or client behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub subject: String,
    /// May create, change, pause, cancel and replay.
    pub may_change: bool,
}

impl Caller {
    /// The local runner's user: `local-admin`, allowed everything (documented in docs/api.md).
    pub fn local_admin() -> Self {
        Self { subject: "local-admin".into(), may_change: true }
    }

    /// The caller the authorizer's claims describe; `None` without a subject. `cognito:groups` arrives as
    /// `[admins readers]`, `scope` as a space-separated list.
    pub fn from_claims(claims: &HashMap<String, String>) -> Option<Self> {
        let subject = claims.get("sub").filter(|s| !s.is_empty())?.clone();
        let listed = |name: &str, wanted: &str| {
            claims.get(name).is_some_and(|value| {
                value.trim_matches(|c| c == '[' || c == ']').split([' ', ',']).any(|item| item.trim() == wanted)
            })
        };
        let may_change = listed("cognito:groups", ADMIN_GROUP) || listed("scope", WRITE_SCOPE);
        Some(Self { subject, may_change })
    }
}

/// The claims API Gateway's JWT authorizer passed on, when the request came through it.
fn authorizer_claims(request: &Request) -> Option<&HashMap<String, String>> {
    match request.extensions().get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(context) => Some(&context.authorizer.as_ref()?.jwt.as_ref()?.claims),
        // Other event sources, should another crate enable them: no JWT authorizer stands before those.
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The middleware in front of every route but `/openapi.json` (the document is public): it finds the caller,
/// refuses with 401 or 403, and leaves the [`Caller`] in the request for the handlers.
pub async fn authorize(mut request: Request, next: Next) -> Response {
    if request.uri().path() == "/openapi.json" {
        return next.run(request).await;
    }
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .or_else(|| authorizer_claims(&request).and_then(Caller::from_claims));
    let Some(caller) = caller else {
        return Problem::unauthorized("sign in: the request carries no verified identity").into_response();
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads && !caller.may_change {
        let detail = format!("changes need a member of the {ADMIN_GROUP:?} group or the {WRITE_SCOPE:?} scope");
        return Problem::forbidden(detail).into_response();
    }
    tracing::debug!(subject = caller.subject, method = %request.method(), path = request.uri().path(), "authorized");
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn groups_and_scopes_decide_who_may_change() {
        let admin = Caller::from_claims(&claims(&[("sub", "u1"), ("cognito:groups", "[readers admins]")])).unwrap();
        assert!(admin.may_change);
        let reader = Caller::from_claims(&claims(&[("sub", "u2"), ("cognito:groups", "[readers]")])).unwrap();
        assert!(!reader.may_change);
        let machine = Caller::from_claims(&claims(&[("sub", "c1"), ("scope", "openid clickpacer/write")])).unwrap();
        assert!(machine.may_change);
        let lookalike = Caller::from_claims(&claims(&[("sub", "u3"), ("cognito:groups", "[admins-old]")])).unwrap();
        assert!(!lookalike.may_change);
        assert_eq!(Caller::from_claims(&claims(&[("cognito:groups", "[admins]")])), None, "no subject, no caller");
    }
}
