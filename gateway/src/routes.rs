//! The routes each HTTP listener serves, listed, and the JSON refusals of the requests
//! none of them takes: an unknown path (`404`) and a served path asked with another
//! method (`405`, with axum's `Allow` header), both `{"code": "invalid", "message"}`
//! as every other refusal of the gateway's listeners.

use std::sync::Arc;

use axum::extract::MatchedPath;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use warren_protocol::ErrorCode;

/// A route a listener serves: its path pattern and the methods it answers.
pub(crate) type Route = (&'static str, &'static str);

/// The longest part of a request's path quoted in a refusal.
const QUOTED_PATH: usize = 128;

/// `router`, whose routes are `served`, with the JSON answers to the requests none of
/// them takes. Call it on a listener's whole router, once every route is in it: axum
/// gives the 405 answer to the routes present when it is set.
pub(crate) fn answer_the_rest(router: Router, served: Vec<Route>) -> Router {
    let served: Arc<[Route]> = served.into();
    let listed = served.clone();
    router
        .fallback(move |uri: Uri| {
            let served = listed.clone();
            async move { not_found(&served, uri.path()) }
        })
        .method_not_allowed_fallback(
            move |method: Method, uri: Uri, matched: Option<MatchedPath>| {
                let served = served.clone();
                async move {
                    let pattern = matched.as_ref().map_or(uri.path(), MatchedPath::as_str);
                    method_not_allowed(&served, &method, uri.path(), pattern)
                }
            },
        )
}

fn not_found(served: &[Route], path: &str) -> Response {
    let list: Vec<String> = served
        .iter()
        .map(|(path, methods)| format!("{path} ({methods})"))
        .collect();
    refusal(
        StatusCode::NOT_FOUND,
        format!(
            "no route `{}`; this listener serves {}",
            crate::inbound::truncate(path, QUOTED_PATH),
            list.join(", ")
        ),
    )
}

fn method_not_allowed(served: &[Route], method: &Method, path: &str, pattern: &str) -> Response {
    let allowed = served
        .iter()
        .find(|(p, _)| *p == pattern)
        .map_or("another method", |(_, methods)| methods);
    refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "`{}` answers {allowed}, not {}",
            crate::inbound::truncate(path, QUOTED_PATH),
            crate::inbound::truncate(method.as_str(), 16)
        ),
    )
}

fn refusal(status: StatusCode, message: String) -> Response {
    crate::server::refusal(status, ErrorCode::Invalid, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn an_unknown_path_is_named_with_the_routes_served_and_a_wrong_method_with_the_right_one()
    {
        let served = [("/ws", "GET"), ("/presence", "GET, OPTIONS")];
        let response = not_found(&served, "/nope");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = body_of(response).await;
        assert_eq!(body["code"], "invalid");
        assert_eq!(
            body["message"],
            "no route `/nope`; this listener serves /ws (GET), /presence (GET, OPTIONS)"
        );
        let response = method_not_allowed(&served, &Method::POST, "/presence", "/presence");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body = body_of(response).await;
        assert_eq!(body["code"], "invalid");
        assert_eq!(
            body["message"],
            "`/presence` answers GET, OPTIONS, not POST"
        );
        let long = format!("/{}", "x".repeat(1000));
        let body = body_of(not_found(&served, &long)).await;
        assert!(body["message"].as_str().unwrap().len() < 300, "{body}");
    }
}
