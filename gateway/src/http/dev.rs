//! The page `herald-gateway dev` serves at `/`.

use actix_web::HttpResponse;

const INDEX: &str = include_str!("../../assets/dev.html");

pub async fn index() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(INDEX)
}
