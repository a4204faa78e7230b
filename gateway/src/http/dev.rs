//! What `herald-gateway dev` serves besides the API: the demo page at `/` and the browser
//! client at `/client/herald.js`, importable with no build step.

use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("../../assets/dev.html");

/// The browser client's modules (plain ESM with relative imports), by the name they are served
/// under. `herald.js` is the package entry point.
const CLIENT_MODULES: &[(&str, &str)] = &[
    ("herald.js", include_str!("../../../clients/js/src/index.js")),
    ("client.js", include_str!("../../../clients/js/src/client.js")),
    ("attempt.js", include_str!("../../../clients/js/src/attempt.js")),
    ("parser.js", include_str!("../../../clients/js/src/parser.js")),
    ("backoff.js", include_str!("../../../clients/js/src/backoff.js")),
    ("share.js", include_str!("../../../clients/js/src/share.js")),
    ("names.js", include_str!("../../../clients/js/src/names.js")),
    ("requests.js", include_str!("../../../clients/js/src/requests.js")),
    ("envelope.js", include_str!("../../../clients/js/src/envelope.js")),
    ("registry.js", include_str!("../../../clients/js/src/registry.js")),
    ("timer.js", include_str!("../../../clients/js/src/timer.js")),
    ("react-bindings.js", include_str!("../../../clients/js/src/react-bindings.js")),
];

pub async fn index() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(INDEX)
}

pub async fn client_module(name: web::Path<String>) -> HttpResponse {
    match CLIENT_MODULES.iter().find(|(n, _)| *n == name.as_str()) {
        Some((_, source)) => HttpResponse::Ok()
            .content_type("text/javascript; charset=utf-8")
            .insert_header(("Cache-Control", "no-cache"))
            .body(*source),
        None => {
            HttpResponse::NotFound().json(serde_json::json!({"error":"not_found","message":"no such client module"}))
        }
    }
}
