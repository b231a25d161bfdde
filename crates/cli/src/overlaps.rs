//! How `mirrordctl` words another user's filter that shares requests with yours on a port
//! (the operator finds them: the first subscriber gets a request both match).

use mirrord_protocol::FilterOverlap;

/// Printed when a session opens, for each earlier filter that overlaps it.
pub fn warning(port: u16, o: &FilterOverlap) -> String {
    let who = format!("session {} ({})", o.session_id, o.client_user);
    match (o.first, o.catch_all) {
        (true, true) => format!(
            "port {port}: {who} subscribed first with `{}`, which matches every request: you may receive nothing on this port while it holds it",
            o.filter
        ),
        (true, false) => format!(
            "port {port}: {who} subscribed first with `{}`, which also matches requests yours does (e.g. {}): those go to {}",
            o.filter, o.example, o.client_user
        ),
        (false, _) => format!(
            "port {port}: {who}'s later filter `{}` also matches requests yours does (e.g. {}); they still come to you",
            o.filter, o.example
        ),
    }
}

/// One line under the port in the `status` table.
pub fn status_line(o: &FilterOverlap) -> String {
    let order = if o.first { "before" } else { "after" };
    let all = if o.catch_all {
        ", matches every request"
    } else {
        ""
    };
    format!(
        "  overlaps {} ({}), subscribed {order}{all}",
        o.session_id, o.client_user
    )
}
