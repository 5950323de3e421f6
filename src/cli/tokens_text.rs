//! The token plan as text and as JSON (`plan tokens`, `apply tokens`).

pub(super) fn token_plans_text(plans: &[crate::tokens::planner::TokenPlan]) -> String {
    let mut text = String::new();
    for p in plans {
        text.push_str(&format!("{} (instance {}):\n", p.name, p.instance));
        match &p.current {
            Some(cur) => text.push_str(&format!(
                "  current: token {} (rotation {}), expires {}\n",
                cur.token_id,
                cur.rotation_id,
                cur.expires_at
                    .map_or("never".to_string(), |e| e.to_rfc3339())
            )),
            None => text.push_str("  current: none usable\n"),
        }
        if p.steps.is_empty() {
            text.push_str("  now: nothing to do\n");
        }
        for step in &p.steps {
            text.push_str(&format!("  now: {}\n", step.describe()));
        }
        for u in &p.upcoming {
            text.push_str(&format!("  at {}: {}\n", u.at.to_rfc3339(), u.what));
        }
        if let Some(at) = p.backoff_until {
            text.push_str(&format!(
                "  backing off after failed rotations: next attempt at {}\n",
                at.to_rfc3339()
            ));
        }
        for f in &p.foreign {
            text.push_str(&format!(
                "  foreign: token {} is left alone: {}\n",
                f.token_id, f.why
            ));
        }
        for n in &p.notes {
            text.push_str(&format!("  note: {n}\n"));
        }
    }
    text
}

pub(super) fn token_plans_json(plans: &[crate::tokens::planner::TokenPlan]) -> String {
    let doc: Vec<serde_json::Value> = plans
        .iter()
        .map(|p| {
            serde_json::json!({
                "token": p.name,
                "instance": p.instance,
                "current": p.current.as_ref().map(|c| serde_json::json!({
                    "token_id": c.token_id,
                    "rotation_id": c.rotation_id,
                    "expires_at": c.expires_at.map(|e| e.to_rfc3339()),
                })),
                "now": p.steps.iter().map(|s| s.describe()).collect::<Vec<_>>(),
                "upcoming": p.upcoming.iter().map(|u| serde_json::json!({
                    "at": u.at.to_rfc3339(), "what": u.what,
                })).collect::<Vec<_>>(),
                "next_attempt_at": p.backoff_until.map(|at| at.to_rfc3339()),
                "foreign": p.foreign.iter().map(|f| serde_json::json!({
                    "token_id": f.token_id, "why": f.why,
                })).collect::<Vec<_>>(),
                "notes": p.notes,
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "schema": "kcr-housekeeper/token-plan/v1",
        "tokens": doc,
    }))
    .expect("serialises")
        + "\n"
}
