//! The live page's files, embedded in the binary (no CDN, nothing to install): `GET /`,
//! `/app.js`, `/style.css`.

/// The file at `path`: its content type and bytes.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", include_str!("page/index.html"))),
        "/app.js" => Some((
            "text/javascript; charset=utf-8",
            include_str!("page/app.js"),
        )),
        "/style.css" => Some(("text/css; charset=utf-8", include_str!("page/style.css"))),
        _ => None,
    }
}

/// What the page's responses may load and do: only from the daemon itself, no frames.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; form-action 'self'";
