//! A wasi:http component: answers every request with a greeting and the `CACHE_SIZE` its
//! `WebAssembly` object sets in `spec.env` (the only variable it can see unless granted more).

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let cache_size = std::env::var("CACHE_SIZE").unwrap_or_else(|_| "<unset>".into());
        let path = request.path_with_query().unwrap_or_default();
        let text = format!("hello from wa8s (rust) at {path}: CACHE_SIZE={cache_size}\n");

        let headers = Fields::new();
        // A fresh Fields accepts any valid header; nothing to recover from here.
        let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut stream) = body.write() {
            let _ = stream.write_all(text.as_bytes());
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
