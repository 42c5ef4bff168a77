//! Drift and out-of-distribution monitoring from the kNN evidence every prediction already has.
//!
//! Each prediction's similarity to its nearest gallery image says how familiar the image is:
//! an image unlike anything the model was trained and indexed on has a low one, whatever class
//! the vote then gives it. The eval stage records the test set's distribution of it (and the
//! share of test images predicted as each class) as the version's [`SimilarityBaseline`]; a
//! [`DriftMonitor`] compares the last `window` requests of a served version with it:
//!
//! - **low-similarity share**: the share of recent requests whose nearest similarity lies
//!   below the baseline's `low_similarity_quantile` (so about that share of in-distribution
//!   requests do); alert above `max_low_share`;
//! - **class shift**: the total-variation distance between the recent predicted-class shares
//!   and the test set's (0 = same mix, 1 = disjoint); alert above `max_class_shift`.
//!
//! An alert clears when both figures fall below 80 % of their limits (no flapping at a limit).
//! The monitor is a policy: [`DriftMonitor::observe`] returns a transition (alert fired or
//! cleared) and the inference thread that owns it logs, notifies and exports it.

use std::collections::VecDeque;

use mlops_core::artifact::SimilarityBaseline;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Drift thresholds (`[drift]` in `serve.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Watch served versions that carry a similarity baseline.
    pub enabled: bool,
    /// Recent requests compared with the baseline.
    pub window: usize,
    /// Requests in the window before any judgement (a few requests prove nothing).
    pub min_requests: usize,
    /// The baseline quantile of nearest similarity below which a request counts as low.
    pub low_similarity_quantile: f64,
    /// Alert when more than this share of the window is low (in distribution: about
    /// `low_similarity_quantile`).
    pub max_low_share: f64,
    /// Alert when the predicted-class mix is further than this (total variation) from the
    /// test set's.
    pub max_class_shift: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        // With 200 requests, in-distribution traffic has ~10 low ones (5 %); more than 50 (25 %)
        // by chance has a probability of 3e-22, and still 3e-10 if the served images are twice
        // as often low as the test set's were. A window of random test images shifts the class
        // mix by ~0.08 in total variation.
        DriftConfig {
            enabled: true,
            window: 200,
            min_requests: 50,
            low_similarity_quantile: 0.05,
            max_low_share: 0.25,
            max_class_shift: 0.4,
        }
    }
}

impl DriftConfig {
    /// Rejects thresholds that could never or would always fire.
    pub fn check(&self) -> Result<()> {
        let fraction = |x: f64| x > 0.0 && x < 1.0;
        if self.window == 0 || self.min_requests == 0 || self.min_requests > self.window {
            return Err(Error::Config(
                "drift: window and min_requests must be at least 1, min_requests at most window"
                    .into(),
            ));
        }
        if !fraction(self.low_similarity_quantile)
            || !fraction(self.max_low_share)
            || !fraction(self.max_class_shift)
        {
            return Err(Error::Config(
                "drift: low_similarity_quantile, max_low_share and max_class_shift must lie in (0, 1)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Where a version's recent requests stand against its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DriftStatus {
    /// Requests in the window.
    pub requests: usize,
    /// Share of the window's requests less similar to the gallery than the baseline's low
    /// quantile.
    pub low_similarity_share: f64,
    /// How far the window's predicted classes are from the test set's (total variation).
    pub class_shift: f64,
    /// Whether the alert is raised.
    pub alerting: bool,
}

/// A change of alert state, for the executor to log and notify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The alert was raised.
    Fired(DriftStatus),
    /// The alert was cleared.
    Cleared(DriftStatus),
}

/// An alert clears when both figures are below this fraction of their limits.
const CLEAR_MARGIN: f64 = 0.8;

/// The sliding-window comparison of one served version with its baseline.
#[derive(Debug, Clone)]
pub struct DriftMonitor {
    config: DriftConfig,
    /// Nearest similarity below this is low.
    pub threshold: f32,
    baseline_shares: Vec<f64>,
    recent: VecDeque<(bool, usize)>,
    lows: usize,
    class_counts: Vec<usize>,
    alerting: bool,
}

impl DriftMonitor {
    /// A monitor for a version with `baseline`; `None` when monitoring is off or the baseline
    /// is empty.
    pub fn new(baseline: &SimilarityBaseline, config: &DriftConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let threshold = baseline.quantile(config.low_similarity_quantile)?;
        Some(DriftMonitor {
            config: config.clone(),
            threshold,
            baseline_shares: baseline.class_shares.clone(),
            recent: VecDeque::with_capacity(config.window),
            lows: 0,
            class_counts: vec![0; baseline.class_shares.len()],
            alerting: false,
        })
    }

    /// Counts one answered request; returns the alert's change of state, if any.
    pub fn observe(&mut self, nearest: f32, class: usize) -> Option<Transition> {
        // A NaN similarity (a broken embedding) counts as low: it is nothing like the gallery.
        let low = nearest.is_nan() || nearest < self.threshold;
        if self.recent.len() == self.config.window {
            if let Some((was_low, was_class)) = self.recent.pop_front() {
                self.lows -= usize::from(was_low);
                if let Some(n) = self.class_counts.get_mut(was_class) {
                    *n -= 1;
                }
            }
        }
        self.recent.push_back((low, class));
        self.lows += usize::from(low);
        if let Some(n) = self.class_counts.get_mut(class) {
            *n += 1;
        }
        let status = self.status();
        let judged = status.requests >= self.config.min_requests;
        let (low, shift) = (self.config.max_low_share, self.config.max_class_shift);
        let departs = judged && (status.low_similarity_share > low || status.class_shift > shift);
        // Clearing takes a margin below the limits, so a window hovering at a limit does not
        // flap between alert and all-clear.
        let recovered = judged
            && status.low_similarity_share <= CLEAR_MARGIN * low
            && status.class_shift <= CLEAR_MARGIN * shift;
        match (self.alerting, departs, recovered) {
            (false, true, _) => {
                self.alerting = true;
                Some(Transition::Fired(self.status()))
            }
            (true, _, true) => {
                self.alerting = false;
                Some(Transition::Cleared(self.status()))
            }
            _ => None,
        }
    }

    /// The window's figures now.
    pub fn status(&self) -> DriftStatus {
        let n = self.recent.len();
        let share = |count: usize| {
            if n == 0 {
                0.0
            } else {
                count as f64 / n as f64
            }
        };
        let class_shift = if n == 0 {
            0.0
        } else {
            0.5 * self
                .baseline_shares
                .iter()
                .zip(&self.class_counts)
                .map(|(&b, &c)| (share(c) - b).abs())
                .sum::<f64>()
        };
        DriftStatus {
            requests: n,
            low_similarity_share: share(self.lows),
            class_shift,
            alerting: self.alerting,
        }
    }

    /// The thresholds, for metrics and notifications.
    pub fn config(&self) -> &DriftConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> SimilarityBaseline {
        // Similarities spread over 0.80..0.99, classes evenly predicted.
        let sims: Vec<f32> = (0..1000).map(|i| 0.80 + 0.00019 * i as f32).collect();
        let classes: Vec<usize> = (0..1000).map(|i| i % 4).collect();
        SimilarityBaseline::new(&sims, &classes, 4)
    }

    fn config() -> DriftConfig {
        DriftConfig {
            window: 100,
            min_requests: 20,
            ..DriftConfig::default()
        }
    }

    #[test]
    fn in_distribution_traffic_stays_quiet_and_foreign_traffic_fires_within_the_window() {
        let mut m = DriftMonitor::new(&baseline(), &config()).unwrap();
        assert!((m.threshold - 0.8095).abs() < 0.002, "{}", m.threshold);
        for i in 0..500 {
            let sim = 0.80 + 0.00019 * ((i * 7919) % 1000) as f32;
            assert_eq!(m.observe(sim, i % 4), None, "request {i}");
        }
        let s = m.status();
        assert_eq!(s.requests, 100);
        assert!(s.low_similarity_share < 0.1 && s.class_shift < 0.1, "{s:?}");
        // Foreign images: far from every gallery image, all voted into one class.
        let fired = (1..=100)
            .find(|_| matches!(m.observe(0.3, 0), Some(Transition::Fired(_))))
            .expect("the alert fires within the window");
        assert!(fired <= 26, "fired after {fired} foreign requests");
        // Back to normal: the alert clears once the foreign requests leave the window.
        let cleared = (1..=200)
            .find(|i| matches!(m.observe(0.9, i % 4), Some(Transition::Cleared(_))))
            .expect("the alert clears");
        assert!(cleared <= 100, "cleared after {cleared}");
    }

    #[test]
    fn a_skewed_class_mix_alone_fires() {
        let mut m = DriftMonitor::new(&baseline(), &config()).unwrap();
        let fired = (0..100).find(|_| m.observe(0.95, 2).is_some());
        assert_eq!(
            fired,
            Some(19),
            "judged from min_requests on: {:?}",
            m.status()
        );
        assert!(m.status().class_shift > 0.7);
    }

    #[test]
    fn nothing_is_judged_before_min_requests_and_bad_thresholds_are_refused() {
        let mut m = DriftMonitor::new(&baseline(), &config()).unwrap();
        for _ in 0..19 {
            assert_eq!(m.observe(f32::NAN, 0), None);
        }
        assert!(m.observe(0.1, 0).is_some());
        let off = DriftConfig {
            enabled: false,
            ..DriftConfig::default()
        };
        assert!(DriftMonitor::new(&baseline(), &off).is_none());
        for bad in [
            DriftConfig {
                window: 0,
                ..DriftConfig::default()
            },
            DriftConfig {
                min_requests: 500,
                ..DriftConfig::default()
            },
            DriftConfig {
                max_low_share: 1.0,
                ..DriftConfig::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(DriftConfig::default().check().is_ok());
    }
}
