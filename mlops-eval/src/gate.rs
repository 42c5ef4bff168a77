//! The deploy gate: a pure policy from metrics to a decision; the caller does the I/O.

use mlops_core::artifact::{Decision, GatePolicy, PairedComparison};

/// What the candidate is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Baseline {
    /// Nothing is deployed.
    None,
    /// The deployed model's accuracy, measured apart (no paired comparison was possible).
    Accuracy(f64),
    /// The deployed model classified the candidate's own test images: compared pair by pair.
    Paired(PairedComparison),
    /// The deployed model answers other classes: a different model, no comparison.
    OtherClasses {
        /// The deployed model's class names, in label order.
        deployed: Vec<String>,
        /// The candidate's class names, in label order.
        candidate: Vec<String>,
    },
}

/// Applies `policy` to a candidate's `accuracy` and what it is compared with.
pub fn decide(accuracy: f64, baseline: &Baseline, policy: GatePolicy) -> Decision {
    let mut deploy = true;
    let mut reasons = Vec::new();
    let current_accuracy = match baseline {
        Baseline::Accuracy(a) => Some(*a),
        Baseline::Paired(p) => Some(p.deployed_accuracy),
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
    match baseline {
        Baseline::None => reasons.push("no deployed model to compare with".to_string()),
        Baseline::OtherClasses {
            deployed,
            candidate,
        } => {
            deploy = false;
            reasons.push(format!(
                "the deployed model answers other classes ({deployed:?}) than this one ({candidate:?}): \
                 it is another model, so accuracies are not compared and it may not replace it; \
                 register it under another name"
            ));
        }
        Baseline::Paired(p) => {
            let figures = format!(
                "on the same {} test images the deployed model scores {:.4} and this one {:.4}; \
                 only this one is right on {}, only the deployed one on {} (McNemar exact p = {})",
                p.images,
                p.deployed_accuracy,
                p.candidate_accuracy,
                p.candidate_only,
                p.deployed_only,
                p_text(p.p_value)
            );
            let worse = p.deployed_only > p.candidate_only && p.p_value < policy.alpha;
            deploy &= !worse;
            reasons.push(format!(
                "{} than the deployed model at significance {}: {figures}",
                if worse { "worse" } else { "not worse" },
                policy.alpha
            ));
        }
        &Baseline::Accuracy(current) if current - accuracy > policy.max_regression => {
            deploy = false;
            reasons.push(format!(
                "accuracy regresses by {:.4} against the deployed model ({current:.4}), more than the allowed {:.4}",
                current - accuracy,
                policy.max_regression
            ));
        }
        &Baseline::Accuracy(current) => reasons.push(format!(
            "change against the deployed model ({current:.4}): {:+.4}, within the allowed regression {:.4}",
            accuracy - current,
            policy.max_regression
        )),
    }
    Decision {
        deploy,
        accuracy,
        current_accuracy,
        policy,
        reasons,
        paired: match baseline {
            Baseline::Paired(p) => Some(p.clone()),
            _ => None,
        },
    }
}

/// A p-value to read: three decimals, or scientific notation below 0.001.
fn p_text(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// Compares two classifiers' predictions of the same images (`truth`, `candidate` and
/// `deployed` aligned row by row) with McNemar's exact test.
pub fn paired(truth: &[usize], candidate: &[usize], deployed: &[usize]) -> PairedComparison {
    let n = truth.len().min(candidate.len()).min(deployed.len());
    let (mut c_right, mut d_right, mut c_only, mut d_only) = (0usize, 0usize, 0usize, 0usize);
    for i in 0..n {
        let (c, d) = (candidate[i] == truth[i], deployed[i] == truth[i]);
        c_right += c as usize;
        d_right += d as usize;
        c_only += (c && !d) as usize;
        d_only += (d && !c) as usize;
    }
    let share = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    PairedComparison {
        images: n,
        candidate_accuracy: share(c_right),
        deployed_accuracy: share(d_right),
        candidate_only: c_only,
        deployed_only: d_only,
        p_value: mcnemar_exact(c_only, d_only),
    }
}

/// Two-sided p-value of McNemar's exact test: under "both classifiers err alike", each of the
/// `b + c` discordant images is a fair coin; `2 P(X <= min(b, c))` for `X ~ Bin(b + c, 1/2)`,
/// capped at 1. Summed in log space: `2^-n` underflows for the thousands of images a test set
/// can have.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // ln C(n, i) - n ln 2, for i = 0..=k.
    let mut terms = Vec::with_capacity(k + 1);
    let mut log = -(n as f64) * std::f64::consts::LN_2;
    terms.push(log);
    for i in 1..=k {
        log += ((n - i + 1) as f64 / i as f64).ln();
        terms.push(log);
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
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

    #[test]
    fn mcnemar_matches_the_binomial() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert!((mcnemar_exact(10, 0) - 2.0 * 0.5f64.powi(10)).abs() < 1e-12);
        assert_eq!(mcnemar_exact(7, 7), 1.0);
        // 2 * P(X <= 3), X ~ Bin(15, 1/2) = 2 * 576 / 32768.
        assert!((mcnemar_exact(3, 12) - 2.0 * 576.0 / 32768.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 12), mcnemar_exact(12, 3));
        // Thousands of discordant pairs: no underflow, a tiny p for a lopsided split.
        let p = mcnemar_exact(900, 1100);
        assert!(p > 0.0 && p < 1e-5, "{p}");
        assert!(mcnemar_exact(1000, 1010) > 0.8);
    }

    #[test]
    fn the_paired_gate_rejects_only_a_significant_loss() {
        let truth = vec![0usize; 100];
        let right = vec![0usize; 100];
        let mut worse = right.clone();
        worse[..20].fill(1);
        let p = GatePolicy::default();
        let loss = paired(&truth, &worse, &right);
        assert_eq!((loss.candidate_only, loss.deployed_only), (0, 20));
        assert!(
            (loss.deployed_accuracy - 1.0).abs() < 1e-12
                && (loss.candidate_accuracy - 0.8).abs() < 1e-12
        );
        let d = decide(0.8, &Baseline::Paired(loss), p);
        assert!(!d.deploy, "{d:?}");
        assert!(
            d.paired.is_some() && d.reasons[1].contains("McNemar"),
            "{d:?}"
        );
        // Two differences either way: not significant, so no reason to refuse.
        let mut mixed = right.clone();
        mixed[..2].fill(1);
        let mut deployed = right.clone();
        deployed[50] = 1;
        let small = paired(&truth, &mixed, &deployed);
        assert!(decide(0.98, &Baseline::Paired(small), p).deploy);
    }
}
