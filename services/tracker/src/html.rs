//! Server-rendered HTML: the dashboard and a saga's page. No external assets; every value that
//! came from an event goes through [`esc`]. The dashboard's one inline script only replaces its
//! live part with what the server pushes (`/live`, server-sent events): without JavaScript the
//! page is complete as served.

use std::fmt::Write;

use crate::charts;
use crate::diagram::{self, DeadLetter};
use crate::model::Flag;
use crate::projection::{human_ms, reason_codes, SagaRecord, SagaState};
use crate::stats::{Histogram, Minute, StatsView};
use crate::view::{events_of, pnl_words, reversal_summary};

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
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

/// `2026-11-26T00:32:05.123Z` from ms since the Unix epoch (UTC, proleptic Gregorian).
pub fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}\
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.COMPLETED{color:#17663a}.REJECTED{color:#8a5a00}.COMPENSATED{color:#1b4f8a}\
.COMPENSATING{color:#a33}.flag{font-weight:bold;color:#b00}td.t{white-space:nowrap}\
pre{margin:0;white-space:pre-wrap;word-break:break-all;font-size:.85em}\
.cards span{display:inline-block;border:1px solid #ccc;padding:.4em .8em;margin:0 .4em .4em 0}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:.8em;margin:.5em 0 1.5em}\
.chart{width:100%;height:auto;border:1px solid #ddd;background:#fff}\
.chart text{font-family:system-ui,sans-serif}.ct{font-size:12px;font-weight:bold;fill:#222}\
.cl,.cx,.cy{font-size:10px;fill:#555}.cy{text-anchor:end}.ax{stroke:#999}\
form#search{display:flex;flex-wrap:wrap;gap:.4em .8em;align-items:end;margin:.5em 0 1em}\
form#search label{display:flex;flex-direction:column;font-size:.8em;color:#555}\
form#search input,form#search select{font-size:1rem}p.error{color:#b00}\
.diagram{overflow-x:auto}.sequence{min-width:700px;max-width:1000px;width:100%;height:auto}\
.sequence text{font-family:system-ui,sans-serif}.sequence .lane{font-size:13px;font-weight:bold}\
.sequence .lb,.sequence .lg{font-size:11px}.sequence .since{font-size:11px;fill:#555}\
.sequence .dl{font-size:16px;font-weight:bold}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\">\
<title>{}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n",
        esc(title)
    )
}

/// The dashboard's script: the server pushes the live part of the page (`/live` with the
/// page's own query, so a search stays applied) whenever the tracker has projected more, and
/// it replaces that part in place: no reload, so the scroll position and the search form
/// stay as they are. `data-live` says whether the stream is open (`open`), and
/// `data-updates` counts the updates.
const LIVE_SCRIPT: &str = "<script>(function(){var l=document.getElementById('live');\
if(!l||!window.EventSource)return;var s=new EventSource('/live'+location.search);\
s.onopen=function(){l.dataset.live='open'};s.onerror=function(){l.dataset.live='retrying'};\
s.addEventListener('dashboard',function(e){l.innerHTML=e.data;\
l.dataset.updates=String(Number(l.dataset.updates||0)+1)})})();</script>";

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| esc(&v.to_string()))
}

fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

fn saga_link(rec: &SagaRecord) -> String {
    let id = rec.saga_id.to_string();
    format!("<a href=\"/sagas/{id}\">{id}</a>")
}

fn flags(rec: &SagaRecord, now_ms: u64, stuck_after_ms: u64) -> String {
    let mut f = Vec::new();
    if rec.is_stuck(now_ms, stuck_after_ms) {
        f.push("STUCK");
    }
    if rec.is_inconsistent() {
        f.push("INCONSISTENT");
    }
    if f.is_empty() {
        String::new()
    } else {
        format!("<span class=\"flag\">{}</span>", f.join(" "))
    }
}

fn saga_rows(out: &mut String, sagas: &[SagaRecord], now_ms: u64, stuck_after_ms: u64) {
    out.push_str(
        "<table><tr><th>saga</th><th>user</th><th>KRW</th><th>USD</th><th>rate</th>\
<th>state</th><th>flags</th><th>started</th><th>duration</th></tr>\n",
    );
    for r in sagas {
        let state = r.state.as_str();
        let _ = writeln!(
            out,
            "<tr class=\"saga\" data-state=\"{state}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"{state}\">{state}</td><td>{}</td>\
<td>{}</td><td class=\"num\">{}</td></tr>",
            saga_link(r),
            esc(r.user_id.as_str()),
            opt(r.krw_amount()),
            opt(r.usd_amount()),
            opt(r.rate),
            flags(r, now_ms, stuck_after_ms),
            iso_time(r.started_at_ms),
            r.duration_ms().map_or_else(|| "–".to_owned(), human_ms),
        );
    }
    out.push_str("</table>\n");
}

/// A search from the dashboard's form, and what it found.
pub struct Search {
    /// The query parameters as given (to fill the form again and build the next page's link).
    pub params: Vec<(String, String)>,
    /// The page found, or why the search is not valid.
    pub found: Result<(Vec<SagaRecord>, Option<u64>), String>,
}

/// The search parameters the form has, in its order.
pub const SEARCH_PARAMS: [&str; 8] = [
    "state", "user", "reason", "flag", "from", "to", "min_krw", "max_krw",
];

/// What the dashboard shows.
pub struct Dashboard {
    /// `/api/stats`.
    pub stats: StatsView,
    /// STUCK sagas (longest idle first).
    pub stuck: Vec<SagaRecord>,
    /// INCONSISTENT sagas (newest first).
    pub inconsistent: Vec<SagaRecord>,
    /// Sagas with a reversal pending at the venue (newest first).
    pub reversals_pending: Vec<SagaRecord>,
    /// The newest sagas.
    pub recent: Vec<SagaRecord>,
    /// Finished sagas per minute, the last hour (the charts).
    pub minutes: Vec<(u64, Minute)>,
    /// Durations of every finished saga (the histogram).
    pub durations: Histogram,
    /// The search, when the page was asked with one.
    pub search: Option<Search>,
    /// The injected clock's now.
    pub now_ms: u64,
    /// The STUCK threshold.
    pub stuck_after_ms: u64,
}

/// The search form, filled with `params`.
fn search_form(params: &[(String, String)]) -> String {
    let value = |k: &str| {
        params
            .iter()
            .find(|(p, _)| p == k)
            .map_or("", |(_, v)| v.as_str())
    };
    let select = |name: &str, options: &[&str]| {
        let mut s = format!("<select name=\"{name}\"><option value=\"\">any</option>");
        for o in options {
            let selected = if value(name).eq_ignore_ascii_case(o) {
                " selected"
            } else {
                ""
            };
            let _ = write!(s, "<option{selected}>{}</option>", esc(o));
        }
        s.push_str("</select>");
        s
    };
    let input = |name: &str, placeholder: &str| {
        format!(
            "<input name=\"{name}\" value=\"{}\" placeholder=\"{}\" size=\"14\">",
            esc(value(name)),
            esc(placeholder)
        )
    };
    let states: Vec<&str> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
    let flags: Vec<&str> = Flag::ALL.iter().map(|f| f.as_str()).collect();
    format!(
        "<form id=\"search\" method=\"get\" action=\"/\">\
<label>state {}</label><label>user {}</label><label>failure reason {}</label>\
<label>flag {}</label><label>started from {}</label><label>to {}</label>\
<label>KRW at least {}</label><label>KRW at most {}</label>\
<button type=\"submit\">Search</button> <a href=\"/\">clear</a></form>",
        select("state", &states),
        input("user", "alice"),
        select("reason", reason_codes()),
        select("flag", &flags),
        input("from", "2026-11-26T00:00"),
        input("to", "UTC, or ms"),
        input("min_krw", "1000000"),
        input("max_krw", ""),
    )
}

/// The query string of `params` with `cursor` set (the next page's link).
fn with_cursor(params: &[(String, String)], cursor: u64) -> String {
    let mut q: Vec<String> = params
        .iter()
        .filter(|(k, v)| k != "cursor" && !v.is_empty())
        .map(|(k, v)| format!("{}={}", url_escape(k), url_escape(v)))
        .collect();
    q.push(format!("cursor={cursor}"));
    q.join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `GET /`: the search form, then the live part, then the script that keeps it live.
pub fn dashboard(d: &Dashboard) -> String {
    let empty = Vec::new();
    let params = d.search.as_ref().map_or(&empty, |s| &s.params);
    let mut b = String::from("<h1>fx-tracker</h1>\n");
    b.push_str(&search_form(params));
    let _ = write!(
        b,
        "\n<div id=\"live\">{}</div>\n{LIVE_SCRIPT}",
        dashboard_live(d)
    );
    page("fx-tracker", &b)
}

/// The part of the dashboard the server pushes on `/live`: figures, charts, flagged sagas, and
/// the search's results or the newest sagas.
pub fn dashboard_live(d: &Dashboard) -> String {
    let s = &d.stats;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<p id=\"status\">stream sequence {} of {} (lag {}), {} sagas, {} events; \
as of {}</p>",
        s.last_seq,
        s.stream_last_seq,
        s.lag,
        s.total,
        s.events,
        iso_time(d.now_ms)
    );
    b.push_str("<h2>By state</h2><table id=\"by-state\"><tr>");
    for st in SagaState::ALL {
        let _ = write!(b, "<th class=\"{0}\">{0}</th>", st.as_str());
    }
    b.push_str("</tr><tr>");
    for st in SagaState::ALL {
        let _ = write!(
            b,
            "<td class=\"num\" data-state=\"{}\">{}</td>",
            st.as_str(),
            s.by_state[st.as_str()]
        );
    }
    b.push_str("</tr></table>\n");
    let ms = |v: Option<u64>| v.map_or_else(|| "–".to_owned(), human_ms);
    let _ = writeln!(
        b,
        "<div class=\"cards\" id=\"rates\"><span>success {}</span><span>compensation {}</span>\
<span>rejection {}</span><span>p50 {}</span><span>p95 {}</span><span>p99 {}</span>\
<span class=\"{}\">stuck {}</span><span class=\"{}\">inconsistent {}</span>\
<span>undecodable {}</span><span>deposits {} KRW / {} USD</span></div>
<div class=\"cards\" id=\"reversals\"><span class=\"{}\" id=\"reversals-pending\">reversals pending {}</span>\
<span id=\"reversals-total\">reversals done {}</span><span id=\"fx-pnl\">{}</span></div>",
        pct(s.success_rate),
        pct(s.compensation_rate),
        pct(s.rejection_rate),
        ms(s.p50_ms),
        ms(s.p95_ms),
        ms(s.p99_ms),
        if s.stuck > 0 { "flag" } else { "" },
        s.stuck,
        if s.inconsistent > 0 { "flag" } else { "" },
        s.inconsistent,
        s.undecodable,
        s.krw_deposits,
        s.usd_deposits,
        if s.reversals_pending > 0 { "flag" } else { "" },
        s.reversals_pending,
        s.reversals_total,
        esc(&pnl_words(s.fx_pnl_krw)),
    );
    let _ = writeln!(
        b,
        "<div class=\"charts\">{}{}{}{}</div>",
        charts::outcomes_per_minute(&d.minutes),
        charts::duration_percentiles(&d.minutes),
        charts::compensation_rate(&d.minutes),
        charts::duration_histogram(&d.durations)
    );
    if let Some(search) = &d.search {
        b.push_str("<h2 id=\"results\">Search results</h2>\n");
        match &search.found {
            Err(why) => {
                let _ = writeln!(b, "<p class=\"error\">{}</p>", esc(why));
            }
            Ok((sagas, next)) if sagas.is_empty() && next.is_none() => {
                b.push_str("<p>No saga matches.</p>\n");
            }
            Ok((sagas, next)) => {
                saga_rows(&mut b, sagas, d.now_ms, d.stuck_after_ms);
                if let Some(c) = next {
                    let _ = writeln!(
                        b,
                        "<p><a id=\"next-page\" href=\"/?{}\">next page →</a></p>",
                        esc(&with_cursor(&search.params, *c))
                    );
                }
            }
        }
    }
    let _ = writeln!(b, "<h2 id=\"stuck\">Stuck ({})</h2>", s.stuck);
    if d.stuck.is_empty() {
        b.push_str("<p>None.</p>\n");
    } else {
        b.push_str("<table><tr><th>saga</th><th>user</th><th>state</th><th>why</th></tr>\n");
        for r in &d.stuck {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                saga_link(r),
                esc(r.user_id.as_str()),
                r.state,
                esc(&r
                    .stuck_reason(d.now_ms, d.stuck_after_ms)
                    .unwrap_or_default())
            );
        }
        b.push_str("</table>\n");
    }
    let _ = writeln!(
        b,
        "<h2 id=\"inconsistent\">Inconsistent ({})</h2>",
        s.inconsistent
    );
    if d.inconsistent.is_empty() {
        b.push_str("<p>None.</p>\n");
    } else {
        b.push_str("<table><tr><th>saga</th><th>user</th><th>state</th><th>why</th></tr>\n");
        for r in &d.inconsistent {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                saga_link(r),
                esc(r.user_id.as_str()),
                r.state,
                esc(&r.inconsistencies().join("; "))
            );
        }
        b.push_str("</table>\n");
    }
    let _ = writeln!(
        b,
        "<h2 id=\"reversals-pending-list\">Reversals pending at the venue ({})</h2>",
        s.reversals_pending
    );
    if d.reversals_pending.is_empty() {
        b.push_str("<p>None.</p>\n");
    } else {
        b.push_str(
            "<p>Users made whole; the house holds the fill's USD until fx-trade sells it back \
(all: <a href=\"/api/sagas?flag=reversal_pending\">/api/sagas?flag=reversal_pending</a>).</p>\n",
        );
        saga_rows(&mut b, &d.reversals_pending, d.now_ms, d.stuck_after_ms);
    }
    b.push_str("<h2 id=\"recent\">Recent sagas</h2>\n");
    saga_rows(&mut b, &d.recent, d.now_ms, d.stuck_after_ms);
    b.push_str(
        "<p>JSON: <a href=\"/api/stats\">/api/stats</a> · <a href=\"/api/sagas\">/api/sagas</a> · \
<a href=\"/metrics\">/metrics</a></p>",
    );
    b
}

/// One timeline entry's body as fetched from the stream (`None`: no longer there).
pub struct Body {
    /// The subject the stream stored it under.
    pub subject: String,
    /// The body, as text.
    pub text: String,
}

/// `GET /sagas/{id}`. `bodies[i]` belongs to `rec.timeline[i]`.
pub fn saga_page(
    rec: &SagaRecord,
    bodies: &[Option<Body>],
    dead: &[DeadLetter],
    now_ms: u64,
    stuck_after_ms: u64,
) -> String {
    let mut b = String::new();
    let id = rec.saga_id.to_string();
    let _ = writeln!(
        b,
        "<p><a href=\"/\">← dashboard</a></p><h1>Saga {id}</h1>\
<table><tr><th>state</th><td class=\"{0}\">{0}</td></tr><tr><th>user</th><td>{1}</td></tr>\
<tr><th>KRW</th><td>{2}</td></tr><tr><th>USD</th><td>{3}</td></tr><tr><th>rate</th><td>{4}</td></tr>\
<tr><th>requested KRW</th><td>{5}</td></tr><tr><th>min USD</th><td>{6}</td></tr>\
<tr><th>failure</th><td>{7}</td></tr><tr><th>started</th><td>{8}</td></tr>\
<tr><th>finished</th><td>{9}</td></tr><tr><th>duration</th><td>{10}</td></tr>\
<tr><th>flags</th><td>{11}</td></tr></table>",
        rec.state.as_str(),
        esc(rec.user_id.as_str()),
        opt(rec.krw_amount()),
        opt(rec.usd_amount()),
        opt(rec.rate),
        opt(rec.requested_krw),
        opt(rec.min_usd_amount),
        opt(rec.failure),
        iso_time(rec.started_at_ms),
        rec.finished_at_ms.map_or_else(|| "–".to_owned(), iso_time),
        rec.duration_ms().map_or_else(|| "–".to_owned(), human_ms),
        flags(rec, now_ms, stuck_after_ms),
    );
    if let Some(why) = rec.stuck_reason(now_ms, stuck_after_ms) {
        let _ = writeln!(b, "<p class=\"flag\">STUCK: {}</p>", esc(&why));
    }
    if let Some(reversal) = reversal_summary(rec) {
        let class = if rec.is_reversal_pending() {
            " class=\"flag\""
        } else {
            ""
        };
        let _ = writeln!(
            b,
            "<h2>Reversal</h2><p id=\"reversal\"{class}>{}</p>",
            esc(&reversal)
        );
    }
    for why in rec.inconsistencies() {
        let _ = writeln!(b, "<p class=\"flag\">INCONSISTENT: {}</p>", esc(&why));
    }
    // The diagram reads trade.failed's reason from its body: did the venue not answer?
    let reasons: Vec<Option<String>> = bodies
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(&b.as_ref()?.text).ok()?;
            v.get("reason")?.as_str().map(str::to_owned)
        })
        .collect();
    let _ = writeln!(
        b,
        "<h2>Sequence</h2><div class=\"diagram\">{}</div>",
        diagram::sequence(rec, &reasons, dead)
    );
    if !dead.is_empty() {
        let _ = writeln!(
            b,
            "<p class=\"flag\">{} dead letter(s) of this saga in FX_DLQ (fxctl dlq list).</p>",
            dead.len()
        );
    }
    b.push_str(
        "<h2>Timeline</h2><table><tr><th>#</th><th>type</th><th>subject</th><th>stream seq</th>\
<th>time</th><th>since previous</th><th>body</th></tr>\n",
    );
    for (i, ev) in events_of(rec).iter().enumerate() {
        let body = match bodies.get(i) {
            Some(Some(body)) => {
                let mut t = format!(
                    "<details><summary>JSON</summary><pre>{}</pre></details>",
                    esc(&body.text)
                );
                if body.subject != ev.subject {
                    t.push_str(&format!("<p>stored under {}</p>", esc(&body.subject)));
                }
                t
            }
            _ => "<em>not in the stream any more</em>".to_owned(),
        };
        let _ = writeln!(
            b,
            "<tr class=\"event\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"t\">{}</td>\
<td class=\"num\">{}</td><td>{body}</td></tr>",
            i + 1,
            esc(&ev.kind),
            esc(&ev.subject),
            ev.seq,
            iso_time(ev.at),
            ev.since_previous_ms.map_or_else(|| "–".to_owned(), |d| format!("+{}", human_ms(d))),
        );
    }
    b.push_str("</table>\n");
    if rec.timeline_dropped > 0 {
        let _ = writeln!(
            b,
            "<p>{} more events (duplicates) were applied but not kept.</p>",
            rec.timeline_dropped
        );
    }
    let _ = writeln!(
        b,
        "<p>JSON: <a href=\"/api/sagas/{id}\">/api/sagas/{id}</a></p>"
    );
    page(&format!("saga {id}"), &b)
}

/// A page for 404s and bad requests.
pub fn message_page(title: &str, message: &str) -> String {
    page(
        title,
        &format!(
            "<p><a href=\"/\">← dashboard</a></p><h1>{}</h1><p>{}</p>",
            esc(title),
            esc(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(1_795_660_800_123), "2026-11-26T02:40:00.123Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
