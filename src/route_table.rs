//! The one table of the API's routes: each path template with the methods it answers. Metrics
//! label requests by these templates, and CORS preflights answer with a template's methods, so
//! both read this list and a new route is added here once (and to `routes.rs`).

/// A route template and the methods the API serves on it.
pub struct Route {
    pub template: &'static str,
    pub methods: &'static [&'static str],
}

const fn route(template: &'static str, methods: &'static [&'static str]) -> Route {
    Route { template, methods }
}

pub const ROUTES: &[Route] = &[
    route("/health", &["GET", "HEAD"]),
    route("/auth/users", &["POST"]),
    route("/auth/users/me", &["GET", "DELETE"]),
    route("/auth/jwt/create", &["POST"]),
    route("/auth/jwt/refresh", &["POST"]),
    route("/auth/jwt/verify", &["POST"]),
    route("/auth/password", &["POST"]),
    route("/auth/password/reset", &["POST"]),
    route("/auth/password/reset/confirm", &["POST"]),
    route("/device/*", &["GET", "POST", "DELETE"]),
    route("/prekeys/:regId", &["GET", "POST"]),
    route("/kyberprekeys/:regId", &["POST"]),
    route("/signedprekey/:regId", &["POST"]),
    route("/prekeybundle/:username/:regId", &["GET"]),
    route("/messages/:regId", &["GET", "POST", "DELETE"]),
    route("/messages/:regId/ws", &["GET"]),
    route("/v2/devices", &["GET", "POST"]),
    route("/v2/devices/:deviceId", &["DELETE"]),
    route("/v2/prekeybundle/:username/:regId", &["GET"]),
    route("/v2/messages/:regId", &["POST"]),
    route("/attachments", &["POST", "OPTIONS"]),
    route("/attachments/:id", &["GET", "HEAD", "PATCH", "DELETE"]),
    route("/", &["GET"]),
];

/// The route a path belongs to, as `routes.rs` matches it: trailing slashes do not count, and a
/// `<regId>` must be a number (anything else is an unknown path there too). Does not allocate.
pub fn find(path: &str) -> Option<&'static Route> {
    let template = template_of(path)?;
    ROUTES.iter().find(|r| r.template == template)
}

/// Index of a path's route in `ROUTES`, or `ROUTES.len()` for an unknown path.
pub fn index(path: &str) -> usize {
    template_of(path)
        .and_then(|t| ROUTES.iter().position(|r| r.template == t))
        .unwrap_or(ROUTES.len())
}

fn template_of(path: &str) -> Option<&'static str> {
    let mut seg = [""; 5];
    let mut n = 0;
    for s in path.split('/').filter(|s| !s.is_empty()) {
        if n == seg.len() {
            return None;
        }
        seg[n] = s;
        n += 1;
    }
    let id = |s: &str| s.parse::<u64>().is_ok();
    let template = match &seg[..n] {
        ["health"] => "/health",
        ["auth", "users"] => "/auth/users",
        ["auth", "users", "me"] => "/auth/users/me",
        ["auth", "jwt", "create"] => "/auth/jwt/create",
        ["auth", "jwt", "refresh"] => "/auth/jwt/refresh",
        ["auth", "jwt", "verify"] => "/auth/jwt/verify",
        ["auth", "password"] => "/auth/password",
        ["auth", "password", "reset"] => "/auth/password/reset",
        ["auth", "password", "reset", "confirm"] => "/auth/password/reset/confirm",
        ["device", ..] => "/device/*",
        ["prekeys", r] if id(r) => "/prekeys/:regId",
        ["kyberprekeys", r] if id(r) => "/kyberprekeys/:regId",
        ["signedprekey", r] if id(r) => "/signedprekey/:regId",
        ["prekeybundle", _, r] if id(r) => "/prekeybundle/:username/:regId",
        ["messages", r] if id(r) => "/messages/:regId",
        ["messages", r, "ws"] if id(r) => "/messages/:regId/ws",
        ["v2", "devices"] => "/v2/devices",
        ["v2", "devices", d] if id(d) => "/v2/devices/:deviceId",
        ["v2", "prekeybundle", _, r] if id(r) => "/v2/prekeybundle/:username/:regId",
        ["v2", "messages", r] if id(r) => "/v2/messages/:regId",
        ["attachments"] => "/attachments",
        ["attachments", _] => "/attachments/:id",
        [] => "/",
        _ => return None,
    };
    Some(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_matched_by_its_own_shape() {
        for route in ROUTES {
            let path = route
                .template
                .replace(":regId", "7")
                .replace(":deviceId", "2")
                .replace(":username", "alice")
                .replace(":id", "AAAAAAAAAAAAAAAAAAAAAA")
                .replace('*', "1");
            assert_eq!(find(&path).map(|r| r.template), Some(route.template));
            assert_eq!(
                find(&format!("{path}/")).map(|r| r.template),
                Some(route.template)
            );
        }
    }

    #[test]
    fn a_reg_id_that_is_not_a_number_is_an_unknown_path() {
        assert!(find("/messages/abc").is_none());
        assert!(find("/prekeybundle/alice/x").is_none());
        assert!(find("/messages/1/ws/x").is_none());
        assert_eq!(index("/nope"), ROUTES.len());
        assert_eq!(find("/device").map(|r| r.methods.len()), Some(3));
    }
}
