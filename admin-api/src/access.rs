//! Who may call what. Actions need the bearer token (`admin.token`); without a token
//! they are taken only from loopback. Reads need the token too when one is set, unless
//! `admin.open_reads` opens them (for a scraper without credentials). `/health` and
//! `/ready` are always open: Kubernetes probes carry no token.

use crate::error::ApiError;
use crate::AdminState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// The API's access rules, from the config.
#[derive(Clone, Default)]
pub struct Access {
    token: Option<Arc<str>>,
    open_reads: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("open_reads", &self.open_reads)
            .finish()
    }
}

impl Access {
    /// An empty token counts as none.
    pub fn new(token: Option<&str>, open_reads: bool) -> Self {
        Access {
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            open_reads,
        }
    }
}

/// Who made a request that was let through, for the action log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    /// `token`, `loopback` or `open`.
    pub how: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Action,
}

fn authorize(
    access: &Access,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    kind: Kind,
) -> Result<Caller, ApiError> {
    let Some(token) = &access.token else {
        let loopback = peer.is_some_and(|p| p.ip().is_loopback());
        return match kind {
            Kind::Read => Ok(Caller { how: "open" }),
            Kind::Action if loopback => Ok(Caller { how: "loopback" }),
            Kind::Action => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "actions from other addresses need admin.token to be set",
            )),
        };
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match offered {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => Ok(Caller { how: "token" }),
        _ if kind == Kind::Read && access.open_reads => Ok(Caller { how: "open" }),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is wrong",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <admin.token>`",
        )),
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

fn refuse(e: ApiError) -> Response {
    let unauthorized = e.status == StatusCode::UNAUTHORIZED;
    let mut resp = e.into_response();
    if unauthorized {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
    }
    resp
}

pub(crate) async fn reads(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    match authorize(&state.access, req.headers(), peer(&req), Kind::Read) {
        Ok(_) => next.run(req).await,
        Err(e) => refuse(e),
    }
}

/// Lets an action through or refuses it, and logs every action with who and what.
pub(crate) async fn actions(
    State(state): State<AdminState>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = peer(&req);
    let what = format!("{} {}", req.method(), req.uri().path());
    match authorize(&state.access, req.headers(), peer, Kind::Action) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            let resp = next.run(req).await;
            let status = resp.status().as_u16();
            tracing::warn!(peer = ?peer, auth = caller.how, action = %what, status, "admin action");
            resp
        }
        Err(e) => {
            tracing::warn!(peer = ?peer, action = %what, reason = e.reason, "admin action refused");
            refuse(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn rules() {
        let lo: Option<SocketAddr> = Some("127.0.0.1:5000".parse().unwrap());
        let far: Option<SocketAddr> = Some("10.0.0.7:5000".parse().unwrap());
        let none = Access::new(None, false);
        let tok = Access::new(Some("s3cret"), false);
        let open = Access::new(Some("s3cret"), true);
        let ok = |r: Result<Caller, ApiError>| r.map(|c| c.how).map_err(|e| e.status.as_u16());
        use Kind::*;
        type Case<'a> = (
            &'a Access,
            Option<&'a str>,
            Option<SocketAddr>,
            Kind,
            Result<&'a str, u16>,
        );
        let cases: &[Case] = &[
            (&none, None, lo, Read, Ok("open")),
            (&none, None, far, Read, Ok("open")),
            (&none, None, lo, Action, Ok("loopback")),
            (&none, None, far, Action, Err(403)),
            (&none, None, None, Action, Err(403)),
            (&tok, None, lo, Action, Err(401)),
            (&tok, Some("Bearer nope"), lo, Action, Err(401)),
            (&tok, Some("Bearer s3cret"), far, Action, Ok("token")),
            (&tok, Some("Basic s3cret"), lo, Action, Err(401)),
            (&tok, None, lo, Read, Err(401)),
            (&tok, Some("Bearer s3cret"), far, Read, Ok("token")),
            (&open, None, far, Read, Ok("open")),
            (&open, Some("Bearer nope"), far, Read, Ok("open")),
            (&open, None, far, Action, Err(401)),
        ];
        for (i, (access, auth, peer, kind, want)) in cases.iter().enumerate() {
            let got = ok(authorize(access, &headers(*auth), *peer, *kind));
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let s = format!("{:?}", Access::new(Some("s3cret"), false));
        assert!(!s.contains("s3cret"), "{s}");
    }

    #[test]
    fn comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
