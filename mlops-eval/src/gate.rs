//! The deploy gate: a pure policy from metrics to a decision; the caller does the I/O.

use mlops_core::artifact::{Decision, GatePolicy};

/// What the candidate is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Baseline {
    /// Nothing is deployed.
    None,
    /// The deployed model's accuracy.
    Accuracy(f64),
    /// The deployed model answers other classes: a different model, no comparison.
    OtherClasses {
        deployed: Vec<String>,
        candidate: Vec<String>,
    },
}

/// Applies `policy` to a candidate's `accuracy` and what it is compared with.
pub fn decide(accuracy: f64, baseline: &Baseline, policy: GatePolicy) -> Decision {
    let mut deploy = true;
    let mut reasons = Vec::new();
    let current_accuracy = match baseline {
        Baseline::Accuracy(a) => Some(*a),
        _ => None,
    };
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
    if let Baseline::OtherClasses {
        deployed,
        candidate,
    } = baseline
    {
        deploy = false;
        reasons.push(format!(
            "the deployed model answers other classes ({deployed:?}) than this one ({candidate:?}): \
             it is another model, so accuracies are not compared and it may not replace it; \
             register it under another name"
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
        None if *baseline == Baseline::None => {
            reasons.push("no deployed model to compare with".to_string())
        }
        None => {}
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
        let was = Baseline::Accuracy;
        assert!(decide(0.85, &Baseline::None, p).deploy);
        assert!(!decide(0.79, &Baseline::None, p).deploy);
        assert!(
            decide(0.90, &was(0.904), p).deploy,
            "a 0.004 drop is allowed"
        );
        let d = decide(0.90, &was(0.91), p);
        assert!(!d.deploy);
        assert!(d.reasons.iter().any(|r| r.contains("regresses")));
        let d = decide(0.5, &was(0.9), p);
        assert!(!d.deploy && d.reasons.len() == 2);
        let other = Baseline::OtherClasses {
            deployed: vec!["shirt".into()],
            candidate: vec!["cat".into()],
        };
        let d = decide(0.99, &other, p);
        assert!(!d.deploy, "{d:?}");
        assert_eq!(d.current_accuracy, None);
        assert!(d.reasons[1].contains("[\"shirt\"]") && d.reasons[1].contains("[\"cat\"]"));
    }
}
