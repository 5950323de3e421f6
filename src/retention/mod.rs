//! Retention: a pure planner (DESIGN §6), and — in the next steps — the
//! executor and report renderers.

pub mod planner;

pub use planner::{ActionKind, Plan, PlannedAction, Verdict, plan, plan_explained};
