//! `fxctl saga`: `show` reads a saga's state and timeline from the tracker (no broker
//! connection, no credentials); `reemit`, `cancel` and `refuse-credit` are interventions, admin
//! requests to the services the action concerns, each recorded with the actor and reason.

use clap::Args;
use events::InterventionAction;

use super::{print_json, saga_id, Globals};
use crate::{CtlError, CtlResult};

#[derive(Args, Debug)]
pub struct SagaArgs {
    /// `show`, `reemit`, `cancel` or `refuse-credit`, then the saga id; or only the id.
    #[arg(num_args = 1..=2, value_names = ["ACTION", "ID"])]
    args: Vec<String>,
    /// Why (required for an action; recorded in the `<domain>.intervened` event).
    #[arg(long)]
    reason: Option<String>,
    /// The saga's user (routes to its partition); asked of the tracker when omitted.
    #[arg(long)]
    user: Option<String>,
}

/// Shows the saga, or acts on it.
pub async fn run(g: &Globals, a: SagaArgs) -> CtlResult<()> {
    let (action, id) = parse_args(&a.args)?;
    match action {
        None => show(g, id).await,
        Some(action) => {
            let id = saga_id(id)?;
            intervene(g, action, id, a.reason.as_deref(), a.user.as_deref()).await
        }
    }
}

/// What `fxctl saga ARGS` asks for: `show` or an intervention, and the saga id.
pub fn parse_args(args: &[String]) -> CtlResult<(Option<InterventionAction>, &str)> {
    use InterventionAction as A;
    let (action, id) = match args {
        [id] => (None, id),
        [verb, id] => match verb.as_str() {
            "show" => (None, id),
            "reemit" => (Some(A::Reemit), id),
            "cancel" => (Some(A::Cancel), id),
            "refuse-credit" | "refuse_credit" => (Some(A::RefuseCredit), id),
            other => {
                return Err(CtlError::Usage(format!(
                    "unknown saga action {other:?}: show, reemit, cancel or refuse-credit"
                )))
            }
        },
        _ => return Err(CtlError::Usage("fxctl saga [ACTION] ID".into())),
    };
    Ok((action, id))
}

/// `fxctl saga <action> ID --reason TEXT`: the intervention's admin requests (see
/// [`crate::intervene`]), then each service's answer.
async fn intervene(
    g: &Globals,
    action: InterventionAction,
    id: events::SagaId,
    reason: Option<&str>,
    user: Option<&str>,
) -> CtlResult<()> {
    let reason = reason.ok_or_else(|| {
        CtlError::Usage("an action needs --reason TEXT (recorded with your identity)".into())
    })?;
    let user = match user {
        Some(u) => crate::user(u)?,
        None => {
            let s = crate::saga(&g.tracker_url, id, g.tracker_token.as_deref()).await?;
            crate::user(s["user_id"].as_str().unwrap_or_default())?
        }
    };
    let client = g.connect().await?;
    let out = crate::intervene(&client, id, &user, action, reason, &g.actor).await?;
    if g.json {
        print_json(&out);
    } else {
        for (service, v) in out.as_object().into_iter().flatten() {
            match v.get("refused") {
                Some(r) => println!("fx-{service:<6} refused  {}", r.as_str().unwrap_or("?")),
                None => println!(
                    "fx-{service:<6} {:<8} {}",
                    v["outcome"].as_str().unwrap_or("?"),
                    v["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
    Ok(())
}

/// `fxctl saga`: the tracker only, so it needs no broker connection or credentials.
async fn show(g: &Globals, id: &str) -> CtlResult<()> {
    let id = saga_id(id)?;
    let s = crate::saga(&g.tracker_url, id, g.tracker_token.as_deref()).await?;
    if g.json {
        print_json(&s);
    } else {
        let f = |k: &str| match &s[k] {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(v) => v.clone(),
            v => v.to_string(),
        };
        println!(
            "saga {}  user {}  state {}",
            f("saga_id"),
            f("user_id"),
            f("state")
        );
        println!(
            "KRW {}  USD {}  rate {}  duration {} ms",
            f("krw_amount"),
            f("usd_amount"),
            f("rate"),
            f("duration_ms")
        );
        if s["stuck"] == serde_json::json!(true) || s["inconsistent"] == serde_json::json!(true) {
            println!(
                "flags: stuck={} inconsistent={}",
                f("stuck"),
                f("inconsistent")
            );
        }
        for e in s["events"].as_array().into_iter().flatten() {
            println!(
                "  #{:<8} {:<22} {}",
                e["seq"],
                e["type"].as_str().unwrap_or("?"),
                e["subject"].as_str().unwrap_or("?")
            );
            if let Some(i) = e.get("intervention").filter(|i| i.is_object()) {
                println!(
                    "             {} by {}: {}",
                    i["action"].as_str().unwrap_or("?"),
                    i["actor"].as_str().unwrap_or("?"),
                    i["reason"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_id_alone_shows_the_saga_and_each_action_is_named_as_the_help_says() {
        use InterventionAction as A;
        let id = "0190a000-0000-7000-8000-000000000000";
        assert_eq!(parse_args(&args(&[id])).unwrap(), (None, id));
        assert_eq!(parse_args(&args(&["show", id])).unwrap(), (None, id));
        assert_eq!(
            parse_args(&args(&["reemit", id])).unwrap(),
            (Some(A::Reemit), id)
        );
        assert_eq!(
            parse_args(&args(&["cancel", id])).unwrap(),
            (Some(A::Cancel), id)
        );
        for verb in ["refuse-credit", "refuse_credit"] {
            assert_eq!(
                parse_args(&args(&[verb, id])).unwrap(),
                (Some(A::RefuseCredit), id)
            );
        }
    }

    #[test]
    fn an_unknown_action_or_no_id_is_a_usage_error() {
        for bad in [&["delete", "x"][..], &[], &["a", "b", "c"]] {
            let err = parse_args(&args(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
        }
        assert_eq!(
            parse_args(&args(&["delete", "x"])).unwrap_err().to_string(),
            "unknown saga action \"delete\": show, reemit, cancel or refuse-credit"
        );
    }
}
