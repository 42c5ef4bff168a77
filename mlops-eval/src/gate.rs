//! The deploy gate: a pure policy from metrics to a decision; the caller does the I/O.

use mlops_core::artifact::{Decision, GatePolicy};

/// Applies `policy` to a candidate's `accuracy` and, if given, the deployed model's.
pub fn decide(accuracy: f64, current_accuracy: Option<f64>, policy: GatePolicy) -> Decision {
    let mut deploy = true;
    let mut reasons = Vec::new();
    if accuracy >= policy.min_accuracy {
        reasons.push(format!(
            "accuracy {accuracy:.4} >= minimum {:.4}",
            policy.min_accuracy
        ));
    } else {
        deploy = false;
        reasons.push(format!(
            "accuracy {accuracy:.4} is below the minimum {:.4}",
            policy.min_accuracy
        ));
    }
    match current_accuracy {
        Some(current) if current - accuracy > policy.max_regression => {
            deploy = false;
            reasons.push(format!(
                "accuracy regresses by {:.4} against the deployed model ({current:.4}), more than the allowed {:.4}",
                current - accuracy,
                policy.max_regression
            ));
        }
        Some(current) => reasons.push(format!(
            "change against the deployed model ({current:.4}): {:+.4}, within the allowed regression {:.4}",
            accuracy - current,
            policy.max_regression
        )),
        None => reasons.push("no deployed model to compare with".to_string()),
    }
    Decision {
        deploy,
        accuracy,
        current_accuracy,
        policy,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_rules() {
        let p = GatePolicy::default();
        assert!(decide(0.85, None, p).deploy);
        assert!(!decide(0.79, None, p).deploy);
        assert!(
            decide(0.90, Some(0.904), p).deploy,
            "a 0.004 drop is allowed"
        );
        let d = decide(0.90, Some(0.91), p);
        assert!(!d.deploy);
        assert!(d.reasons.iter().any(|r| r.contains("regresses")));
        let d = decide(0.5, Some(0.9), p);
        assert!(!d.deploy && d.reasons.len() == 2);
    }
}
