//! The document's tests: every route documented, codes with their statuses, each mirror equal to its core type.

use super::*;
use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(document_json()).expect("the document is JSON")
}

/// `(METHOD, path)` of every `.route("path", get(..).post(..))` in the sources of
/// `src/api/` (axum's `Router` does not list its routes).
fn routes_in_sources() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut routes = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected the api's sources in {dir:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // The code, without comments and tests.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let text: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for banned in [".nest(", ".route_service(", ".nest_service("] {
            assert!(
                !text.contains(banned),
                "{}: {banned}...) is not understood by this test; teach it, or use .route",
                file.display()
            );
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's argument list, up to its closing parenthesis.
            let mut depth = 1usize;
            let mut end = 0;
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &rest[..end];
            let path = call.split('"').nth(1).unwrap_or_else(|| {
                panic!("{}: a route without a literal path: {call}", file.display())
            });
            let after = &call[call.find(',').unwrap_or(0)..];
            let mut methods = 0;
            for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
                let needle = format!("{method}(");
                let mut search = after;
                while let Some(i) = search.find(&needle) {
                    let before = search[..i].chars().next_back();
                    if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                        routes.push((method.to_uppercase(), path.to_string()));
                        methods += 1;
                    }
                    search = &search[i + needle.len()..];
                }
            }
            assert!(
                methods > 0,
                "{}: no method found in .route({call})",
                file.display()
            );
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

fn routes_in_document() -> Vec<(String, String)> {
    let doc = document();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes.sort();
    routes
}

#[test]
fn every_route_is_documented() {
    let routes = routes_in_sources();
    let documented = routes_in_document();
    assert!(routes.len() >= 19, "found only {routes:?}");
    let missing: Vec<_> = routes.iter().filter(|r| !documented.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "routes without an OpenAPI entry (add #[utoipa::path] to the handler and list it in \
         ApiDoc's paths, or an ALIASES entry when it reuses a handler): {missing:?}"
    );
    let stale: Vec<_> = documented.iter().filter(|r| !routes.contains(r)).collect();
    assert!(
        stale.is_empty(),
        "documented routes the router does not have: {stale:?}"
    );
}

#[test]
fn every_operation_but_health_needs_the_bearer_token() {
    let doc = document();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let open = operation.get("security") == Some(&serde_json::json!([{}]));
            // The console's files hold no secret; the calls its page makes carry the token.
            let console = path == "/ui" || path.starts_with("/ui/");
            assert_eq!(
                open,
                path == "/health" || console,
                "{method} {path}: only GET /health and the console's files are open"
            );
            let responses = operation["responses"].as_object().unwrap();
            if path != "/health" && !console {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') && path != "/health" {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ApiError",
                        "{method} {path} {status}: errors are ApiError"
                    );
                }
            }
            assert!(
                operation["operationId"].is_string(),
                "{method} {path}: no operationId"
            );
        }
    }
}

#[test]
fn error_codes_have_the_statuses_the_document_names() {
    let doc = document();
    let codes: Vec<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let all: Vec<&str> = pool_core::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, all);
    // Every code some route names in its answers is a known code with that status.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let description = response["description"].as_str().unwrap();
                for code in description.split('`').skip(1).step_by(2) {
                    if code.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                        assert!(codes.iter().any(|c| c == code), "{method} {path}: {code}");
                        if code != "INTERNAL" && code != "INVALID_REQUEST" {
                            let code = pool_core::ErrorCode::parse(code).unwrap();
                            assert_eq!(
                                super::super::status_of(code).as_str(),
                                status,
                                "{method} {path}: {code}"
                            );
                        }
                    }
                }
            }
        }
    }
}

mod mirrors;
mod wire;

#[test]
fn the_503_answers_that_say_when_to_come_back_document_retry_after() {
    let doc = document();
    for (path, method) in [
        ("/v2/pools/{id}/preload", "post"),
        ("/v2/pools/{id}/leases", "post"),
        ("/v2/pools/{id}/reload", "post"),
    ] {
        let answer = &doc["paths"][path][method]["responses"]["503"];
        let header = &answer["headers"]["Retry-After"];
        assert_eq!(
            header["schema"]["type"], "integer",
            "{method} {path}: {answer}"
        );
        let text = header["description"].as_str().unwrap_or_default();
        assert!(text.contains("CIRCUIT_OPEN"), "{method} {path}: {text}");
        assert!(text.contains("backoff"), "{method} {path}: {text}");
    }
}
