//! Gatehouse's own HTML pages: who am I, the sign-in chooser, sign-out and sign-in errors.
//! Plain server-rendered HTML with inline CSS: no JavaScript, no build step, no external assets.

use std::fmt::Write as _;

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
pub(crate) fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "
:root{color-scheme:light dark;--fg:#1d2330;--muted:#5c6578;--bg:#f5f6f8;--card:#fff;--line:#dde1e8;--accent:#2f5bd3;--ok:#1d7a46;--no:#a23b3b}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ef;--muted:#9aa3b5;--bg:#15181e;--card:#1e222b;--line:#313745;--accent:#7fa2ff;--ok:#5fd08f;--no:#f08a8a}}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:var(--card);border-bottom:1px solid var(--line);padding:.8rem 1.5rem;display:flex;align-items:center;gap:.6rem}
header b{font-size:1.05rem;letter-spacing:.02em}header span{color:var(--muted)}
main{max-width:52rem;margin:1.5rem auto;padding:0 1rem}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:1.1rem 1.4rem;margin-bottom:1.2rem}
h1{font-size:1.35rem;margin:.2rem 0 1rem}h2{font-size:1.05rem;margin:0 0 .8rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1.2rem;margin:0}dt{color:var(--muted)}dd{margin:0;word-break:break-all}
.chip{display:inline-block;border:1px solid var(--line);border-radius:999px;padding:0 .6rem;margin:0 .3rem .3rem 0;font-size:.85rem}
table{width:100%;border-collapse:collapse}th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid var(--line)}th{color:var(--muted);font-weight:600;font-size:.85rem}
td code{font-size:.9rem}.yes{color:var(--ok);font-weight:600}.no{color:var(--muted)}
.muted{color:var(--muted)}.err{color:var(--no)}
button,.button{display:inline-block;font:inherit;border:1px solid var(--accent);background:var(--accent);color:#fff;border-radius:7px;padding:.45rem 1rem;cursor:pointer;text-decoration:none}
.button.alt{background:transparent;color:var(--accent)}
ul.plain{list-style:none;padding:0;margin:0}ul.plain li{margin:.4rem 0}
";

/// A whole page.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t} · Gatehouse</title><style>{STYLE}</style></head>\
<body><header><b>Gatehouse</b><span>identity-aware gateway</span></header><main>{body}</main></body></html>\n",
        t = esc(title)
    )
}

/// A sign-in provider on the chooser.
pub(crate) struct ChooserEntry {
    pub(crate) name: String,
    pub(crate) href: String,
}

pub(crate) fn chooser(entries: &[ChooserEntry]) -> String {
    let mut b = String::from(
        "<section><h1>Sign in</h1><p class=\"muted\">Choose where to sign in.</p><ul class=\"plain\">",
    );
    for e in entries {
        let _ = write!(
            b,
            "<li><a class=\"button alt\" href=\"{}\">Sign in with {}</a></li>",
            esc(&e.href),
            esc(&e.name)
        );
    }
    b.push_str("</ul></section>");
    page("Sign in", &b)
}

pub(crate) fn message(title: &str, text: &str, link: Option<(&str, &str)>, error: bool) -> String {
    let mut b = format!(
        "<section><h1>{}</h1><p{}>{}</p>",
        esc(title),
        if error { " class=\"err\"" } else { "" },
        esc(text)
    );
    if let Some((href, label)) = link {
        let _ = write!(
            b,
            "<p><a class=\"button\" href=\"{}\">{}</a></p>",
            esc(href),
            esc(label)
        );
    }
    b.push_str("</section>");
    page(title, &b)
}

pub(crate) fn logout_confirm(csrf: &str) -> String {
    let b = format!(
        "<section><h1>Sign out</h1><p>Sign out of Gatehouse and of your identity provider?</p>\
<form method=\"post\" action=\"/.gatehouse/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<button type=\"submit\">Sign out</button> <a class=\"button alt\" href=\"/.gatehouse/\">Cancel</a></form></section>",
        esc(csrf)
    );
    page("Sign out", &b)
}

/// One row of the who-am-I access table.
pub(crate) struct Access {
    pub(crate) name: String,
    pub(crate) read: bool,
    pub(crate) write: bool,
    /// In the forge's web UI and API (`repo:read`, `repo:write`, `repo:admin`); `None` with a
    /// generic upstream, which has neither.
    pub(crate) web: Option<WebAccess>,
}

/// What a caller may do with a repository in the forge's web UI and API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WebAccess {
    /// View it (`repo:read`).
    pub(crate) view: bool,
    /// Work on it: issues, reviews, comments (`repo:write`).
    pub(crate) work: bool,
    /// Administer it (`repo:admin`).
    pub(crate) administer: bool,
}

/// What the who-am-I page shows.
pub(crate) struct WhoAmI<'a> {
    pub(crate) principal: &'a gatehouse_core::Principal,
    pub(crate) via: String,
    pub(crate) session: Option<SessionView>,
    pub(crate) repos: Vec<Access>,
    pub(crate) links: Vec<String>,
}

pub(crate) struct SessionView {
    pub(crate) started: String,
    pub(crate) ends: String,
    pub(crate) ends_in: String,
    pub(crate) renews: bool,
    pub(crate) refreshes: u32,
    pub(crate) csrf: String,
}

/// `3h 12m`, `45s`.
pub(crate) fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

pub(crate) fn whoami(w: &WhoAmI<'_>) -> String {
    let p = w.principal;
    let name = p.display_name.as_deref().unwrap_or(&p.username);
    let mut b = format!(
        "<section><h1>Signed in as {}</h1><dl><dt>Forge user</dt><dd><code>{}</code></dd>",
        esc(name),
        esc(&p.username)
    );
    if let Some(e) = &p.email {
        let _ = write!(b, "<dt>E-mail</dt><dd>{}</dd>", esc(e));
    }
    let _ = write!(
        b,
        "<dt>Kind</dt><dd>{}</dd><dt>Subject</dt><dd><code>{}</code></dd><dt>Issuer</dt><dd>{}</dd><dt>Signed in via</dt><dd>{}</dd>",
        if p.kind == gatehouse_core::PrincipalKind::User {
            "person"
        } else {
            "service account"
        },
        esc(&p.subject),
        esc(&p.issuer),
        esc(&w.via)
    );
    b.push_str("<dt>Groups</dt><dd>");
    if p.groups.is_empty() {
        b.push_str("<span class=\"muted\">none</span>");
    }
    for g in &p.groups {
        let _ = write!(b, "<span class=\"chip\">{}</span>", esc(g));
    }
    b.push_str("</dd>");
    if let Some(env) = &p.environment {
        let _ = write!(
            b,
            "<dt>Environment</dt><dd><code>{}</code> <span class=\"muted\">(ending it ends this credential)</span></dd>",
            esc(env)
        );
    }
    if let Some(s) = &w.session {
        let _ = write!(
            b,
            "<dt>Signed in at</dt><dd>{}</dd><dt>Session ends</dt><dd>{} <span class=\"muted\">(in {})</span></dd><dt>Renewal</dt><dd>{}</dd>",
            esc(&s.started),
            esc(&s.ends),
            esc(&s.ends_in),
            if s.renews {
                format!(
                    "with the identity provider's refresh token (renewed {} times)",
                    s.refreshes
                )
            } else {
                "none: the session ends when the access token does".to_owned()
            }
        );
    } else if let Some(exp) = p.expires_at {
        let _ = write!(
            b,
            "<dt>Credential expires</dt><dd>{}</dd>",
            esc(&gatehouse_core::UnixTime::from_secs(exp).to_rfc3339())
        );
    }
    b.push_str("</dl>");
    if let Some(s) = &w.session {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/.gatehouse/logout\" style=\"margin-top:1rem\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
            esc(&s.csrf)
        );
    }
    b.push_str("</section><section><h2>Repositories you can reach</h2>");
    if w.repos.is_empty() {
        b.push_str("<p class=\"muted\">No listed repository is open to you.</p>");
    } else {
        let web = w.repos.iter().any(|r| r.web.is_some());
        b.push_str("<table><thead><tr><th>Repository</th><th>Read (clone, fetch)</th><th>Write (push)</th>");
        if web {
            b.push_str(
                "<th>View (web, API)</th><th>Work (issues, reviews)</th><th>Administer</th>",
            );
        }
        b.push_str("</tr></thead><tbody>");
        let cell = |ok: bool| {
            if ok {
                "<td class=\"yes\">yes</td>"
            } else {
                "<td class=\"no\">no</td>"
            }
        };
        for r in &w.repos {
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td>{}{}",
                esc(&r.name),
                cell(r.read),
                cell(r.write)
            );
            if let Some(a) = r.web {
                let _ = write!(b, "{}{}{}", cell(a.view), cell(a.work), cell(a.administer));
            }
            b.push_str("</tr>");
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</section>");
    if !w.links.is_empty() {
        b.push_str("<section><h2>Routes you can open</h2><ul class=\"plain\">");
        for l in &w.links {
            let _ = write!(b, "<li><a href=\"{0}\">{0}</a></li>", esc(l));
        }
        b.push_str("</ul></section>");
    }
    page("Who am I", &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(query_value("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
    }

    /// The web and API columns appear in front of a forge, and only there.
    #[test]
    fn who_am_i_shows_web_access_only_in_front_of_a_forge() {
        let p = gatehouse_core::Principal {
            kind: gatehouse_core::PrincipalKind::User,
            issuer: "urn:i".into(),
            subject: "alice".into(),
            username: "alice".into(),
            display_name: None,
            email: None,
            groups: vec![],
            token_id: None,
            expires_at: None,
            environment: None,
            workload: None,
            derived_from: Vec::new(),
        };
        let page = |web: Option<WebAccess>| {
            whoami(&WhoAmI {
                principal: &p,
                via: "a token".into(),
                session: None,
                repos: vec![Access {
                    name: "acme/api".into(),
                    read: true,
                    write: false,
                    web,
                }],
                links: vec![],
            })
        };
        let forge = page(Some(WebAccess {
            view: true,
            work: false,
            administer: false,
        }));
        assert!(forge.contains("<th>Administer</th>"), "{forge}");
        assert!(
            forge.contains(
                "<td class=\"yes\">yes</td><td class=\"no\">no</td><td class=\"yes\">yes</td>"
            ),
            "{forge}"
        );
        let plain = page(None);
        assert!(!plain.contains("Administer"), "{plain}");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 12 * 60), "3h 12m");
        assert_eq!(human_duration(2 * 86_400 + 3600), "2d 1h");
        assert_eq!(human_duration(-5), "0s");
    }
}
