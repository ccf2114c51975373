//! Server-rendered HTML: the dashboard and a saga's timeline. No scripts, no external assets;
//! every value that came from an event goes through [`esc`].

use std::fmt::Write;

use crate::projection::{human_ms, SagaRecord, SagaState};
use crate::stats::StatsView;
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
.cards span{display:inline-block;border:1px solid #ccc;padding:.4em .8em;margin:0 .4em .4em 0}";

fn page(title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"2\">"
    } else {
        ""
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
<title>{}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n",
        esc(title)
    )
}

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

/// What the dashboard shows.
pub struct Dashboard<'a> {
    /// `/api/stats`.
    pub stats: &'a StatsView,
    /// STUCK sagas (longest idle first).
    pub stuck: &'a [SagaRecord],
    /// INCONSISTENT sagas (newest first).
    pub inconsistent: &'a [SagaRecord],
    /// Sagas with a reversal pending at the venue (newest first).
    pub reversals_pending: &'a [SagaRecord],
    /// The newest sagas.
    pub recent: &'a [SagaRecord],
    /// The injected clock's now.
    pub now_ms: u64,
    /// The STUCK threshold.
    pub stuck_after_ms: u64,
}

/// `GET /`.
pub fn dashboard(d: &Dashboard) -> String {
    let s = d.stats;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>fx-tracker</h1><p>stream sequence {} of {} (lag {}), {} sagas, {} events; \
rendered {} (refreshes every 2 s)</p>",
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
    let _ = writeln!(b, "<h2 id=\"stuck\">Stuck ({})</h2>", s.stuck);
    if d.stuck.is_empty() {
        b.push_str("<p>None.</p>\n");
    } else {
        b.push_str("<table><tr><th>saga</th><th>user</th><th>state</th><th>why</th></tr>\n");
        for r in d.stuck {
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
        for r in d.inconsistent {
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
        saga_rows(&mut b, d.reversals_pending, d.now_ms, d.stuck_after_ms);
    }
    b.push_str("<h2 id=\"recent\">Recent sagas</h2>\n");
    saga_rows(&mut b, d.recent, d.now_ms, d.stuck_after_ms);
    b.push_str(
        "<p>JSON: <a href=\"/api/stats\">/api/stats</a> · <a href=\"/api/sagas\">/api/sagas</a> · \
<a href=\"/metrics\">/metrics</a></p>",
    );
    page("fx-tracker", true, &b)
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
    b.push_str(
        "<h2>Timeline</h2><table><tr><th>#</th><th>type</th><th>subject</th><th>stream seq</th>\
<th>time</th><th>since previous</th><th>body</th></tr>\n",
    );
    for (i, ev) in events_of(rec).iter().enumerate() {
        let body = match bodies.get(i) {
            Some(Some(body)) => {
                let mut t = format!("<pre>{}</pre>", esc(&body.text));
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
    page(&format!("saga {id}"), false, &b)
}

/// A page for 404s and bad requests.
pub fn message_page(title: &str, message: &str) -> String {
    page(
        title,
        false,
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
