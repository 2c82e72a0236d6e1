//! The shadowing lint: whether an earlier route matches every request a later
//! one does, so the later one can never be chosen. Conservative by design:
//! "shadows" is only answered when it provably holds, never on a guess, so
//! the warning is never a false alarm.

use crate::snapshot::{HeaderMatch, HeaderValueMatch, HostMatch, PathMatch, RouteMatch};

/// Whether every request `later` matches is also matched by `earlier`.
pub(crate) fn shadows(earlier: &RouteMatch, later: &RouteMatch) -> bool {
    host_covers(earlier.host.as_ref(), later.host.as_ref())
        && path_covers(earlier.path.as_ref(), later.path.as_ref())
        && methods_cover(earlier, later)
        && earlier
            .headers
            .iter()
            .all(|a| later.headers.iter().any(|b| header_covers(a, b)))
}

fn host_covers(a: Option<&HostMatch>, b: Option<&HostMatch>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(a)), Some(HostMatch::Exact(b))) => a == b,
        // `.example.com` covers `app.example.com` (a longer name ending in it).
        (Some(HostMatch::Suffix(s)), Some(HostMatch::Exact(h))) => {
            h.len() > s.len() && h.ends_with(s.as_str())
        }
        // `.example.com` covers `.a.example.com` and itself: both start with
        // a dot, so suffix on the string is suffix on labels.
        (Some(HostMatch::Suffix(s)), Some(HostMatch::Suffix(t))) => t.ends_with(s.as_str()),
        (Some(HostMatch::Exact(_)), Some(HostMatch::Suffix(_))) => false,
    }
}

fn path_covers(a: Option<&PathMatch>, b: Option<&PathMatch>) -> bool {
    match (a, b) {
        (None, _) => true,
        // A request path could in principle be anything (`*` for OPTIONS),
        // so even prefix "/" is not proven to cover "no condition".
        (Some(_), None) => false,
        (Some(PathMatch::Prefix(p)), Some(PathMatch::Prefix(q) | PathMatch::Exact(q))) => {
            q.starts_with(p.as_str())
        }
        (Some(PathMatch::Exact(p)), Some(PathMatch::Exact(q))) => p == q,
        // Regex languages are not compared; only the same pattern is proof.
        (Some(PathMatch::Regex(p)), Some(PathMatch::Regex(q))) => p.as_str() == q.as_str(),
        _ => false,
    }
}

fn methods_cover(a: &RouteMatch, b: &RouteMatch) -> bool {
    a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)))
}

/// Whether condition `b` (of the later route) implies condition `a`.
fn header_covers(a: &HeaderMatch, b: &HeaderMatch) -> bool {
    if a.name != b.name {
        return false;
    }
    match (&a.value, &b.value) {
        // Any condition on a value implies the header is present.
        (HeaderValueMatch::Present, _) => true,
        (HeaderValueMatch::Exact(x), HeaderValueMatch::Exact(y)) => x == y,
        (HeaderValueMatch::Regex(x), HeaderValueMatch::Regex(y)) => x.as_str() == y.as_str(),
        _ => false,
    }
}

/// Every route that an earlier route provably shadows, as
/// (shadowed index, shadowing index): the `no_shadowed_routes` standard.
pub fn shadowed_routes(snapshot: &crate::Snapshot) -> Vec<(usize, usize)> {
    let routes = &snapshot.routes;
    (0..routes.len())
        .filter_map(|later| {
            (0..later)
                .find(|&earlier| shadows(&routes[earlier].matcher, &routes[later].matcher))
                .map(|earlier| (later, earlier))
        })
        .collect()
}
