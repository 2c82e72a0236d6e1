//! Unit tests of the whole pipeline: source text in, snapshot and
//! diagnostics (and their rendering) out.

use super::*;

fn dump(src: &str) {
    let c = check("fulcrum.toml", src);
    print!("{}", render_human("fulcrum.toml", src, &c));
}

#[test]
fn scratch() {
    dump(
        r#"
[[listener]]
name = "public"
bind = "127.0.0.1:8080"
header_timout = "1s"

[[route]]
name = 5
match = { path_prefix = "/auth/", methods = ["GET", 7], headerz = [] }
pool = "auth"

[[route]]
name = "x"
pool = "auht"

[pool.auth]
algoritm = "least_request"
backends = [{ addr = "127.0.0.1:9101" }, { addr = "127.0.0.1:9101", weight = 2 }, { weight = 1.5 }, {addr = "localhost:80"}]
health = { interval = "1s" }

[pool.web]
backends = []
"#,
    );
    dump("a = [");
}
