//! Classification by nearest neighbours: search the index, let the `k` nearest gallery
//! vectors vote. The eval stage measures with this type and a server predicts with it, so a
//! served prediction is exactly the one eval counted.

use mlops_core::artifact::{ClassifierSpec, Scoring, Vote};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::{LoadedIndex, Result};

/// The `k_max` nearest gallery vectors of each query, row-major `[queries, k_max]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    /// Index ids (gallery rows); `None` where the index returned fewer than `k_max`.
    pub ids: Vec<Option<u64>>,
    /// The class of each neighbour; `None` for a missing neighbour or an unknown label.
    pub labels: Vec<Option<usize>>,
    /// Similarity of each neighbour (cosine for normalised embeddings; higher is nearer).
    pub sims: Vec<f32>,
    /// Neighbours per query.
    pub k_max: usize,
    /// Number of classes votes are cast for.
    pub classes: usize,
}

impl Neighbours {
    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.labels.len() / self.k_max.max(1)
    }

    /// One class per query from its `k` nearest neighbours (see [`vote`]).
    pub fn vote(&self, k: usize, how: Vote) -> Vec<usize> {
        vote(&self.labels, &self.sims, self.k_max, k, self.classes, how)
    }
}

/// One neighbour of a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    /// Gallery row (index id).
    pub id: u64,
    /// The neighbour's class (its label in the index).
    pub class: usize,
    /// Similarity of the neighbour to the query (cosine for normalised embeddings; higher
    /// is nearer).
    pub score: f32,
}

/// A predicted class with the share of the vote it won and the neighbours that voted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The predicted class, an index into the index's classes.
    pub class: usize,
    /// The winning class's share of the (weighted) vote, in `[0, 1]`; with centre or blend
    /// scoring, its blended score (also in `[0, 1]`).
    pub score: f64,
    /// The `k` nearest gallery vectors that voted, nearest first (fewer where the index
    /// returned fewer or a label was unknown).
    pub neighbours: Vec<Neighbour>,
}

impl Prediction {
    /// Each class's share of the neighbours' vote (weighted as `how` says): the evidence behind
    /// a kNN prediction, `classes` long.
    pub fn vote_shares(&self, classes: usize, how: Vote) -> Vec<f64> {
        let mut shares = vec![0.0; classes];
        for n in &self.neighbours {
            if let Some(s) = shares.get_mut(n.class) {
                *s += ballot(n.score, how);
            }
        }
        let total: f64 = shares.iter().sum();
        if total > 0.0 {
            shares.iter_mut().for_each(|s| *s /= total);
        }
        shares
    }
}

/// A loaded index with the vote that turns neighbours into classes.
pub struct Classifier {
    /// The index searched for neighbours, with its labels and class centres.
    pub index: LoadedIndex,
    /// How neighbours (and centres) turn into a class; `k` already capped at the index size.
    pub spec: ClassifierSpec,
}

impl Classifier {
    /// Classifies with `spec` over `index`; `k` is capped at the number of indexed vectors.
    pub fn new(index: LoadedIndex, spec: ClassifierSpec) -> Self {
        let k = spec.k.clamp(1, index.summary().ntotal.max(1));
        Classifier {
            index,
            spec: ClassifierSpec { k, ..spec },
        }
    }

    /// The classes the labels index into.
    pub fn classes(&self) -> &[String] {
        &self.index.summary().classes
    }

    /// The `k_max` nearest neighbours of each query (`queries` is `[m, dim]` row-major).
    pub fn neighbours(&self, queries: &[f32], k_max: usize) -> Result<Neighbours> {
        let classes = self.classes().len();
        let metric = self.index.summary().metric;
        let result = self.index.search(queries, k_max)?;
        let labels = &self.index.labels;
        let ids: Vec<Option<u64>> = result.labels.iter().map(|id| id.get()).collect();
        let class_of = |id: &Option<u64>| {
            id.and_then(|i| labels.get(i as usize).copied())
                .and_then(|l| usize::try_from(l).ok())
                .filter(|&l| l < classes)
        };
        Ok(Neighbours {
            labels: ids.iter().map(class_of).collect(),
            ids,
            sims: result
                .distances
                .iter()
                .map(|&d| metric.similarity(d))
                .collect(),
            k_max,
            classes,
        })
    }

    /// Cosine of each query (`[m, dim]` row-major) to each class centre: `[m, classes]`, or
    /// `None` when the index carries no centres.
    pub fn centre_cosines(&self, queries: &[f32]) -> Option<Array2<f32>> {
        let centres = self.index.centres.as_ref()?;
        let dim = centres.ncols();
        let q = ArrayView2::from_shape((queries.len() / dim.max(1), dim), queries).ok()?;
        Some(q.dot(&centres.t()))
    }

    /// The class of each query under `spec`, from its neighbours `nb` (at least `spec.k` per
    /// query) and, for centre scoring, the centre cosines `cos` of [`Self::centre_cosines`].
    pub fn predict(nb: &Neighbours, cos: Option<&Array2<f32>>, spec: ClassifierSpec) -> Vec<usize> {
        match (spec.scoring, cos) {
            (Scoring::Knn, _) | (_, None) => nb.vote(spec.k, spec.vote),
            (_, Some(cos)) => (0..nb.queries())
                .map(|q| argmax(&class_scores(nb, cos, q, spec)))
                .collect(),
        }
    }

    /// Predicts each query's class with this classifier's spec.
    pub fn classify(&self, queries: &[f32]) -> Result<Vec<Prediction>> {
        let spec = self.spec;
        let (k, how) = (spec.k, spec.vote);
        let nb = self.neighbours(queries, k)?;
        let cos = if spec.scoring == Scoring::Knn {
            None
        } else {
            self.centre_cosines(queries)
        };
        // With centres, one pass of per-class scores gives both the class and its score.
        let voted = if cos.is_none() {
            nb.vote(k, how)
        } else {
            Vec::new()
        };
        Ok((0..nb.queries())
            .map(|q| {
                let (class, blended) = match &cos {
                    Some(cos) => {
                        let scores = class_scores(&nb, cos, q, spec);
                        let class = argmax(&scores);
                        (class, Some(scores[class]))
                    }
                    None => (voted[q], None),
                };
                let row = q * k..(q + 1) * k;
                let mut total = 0.0;
                let mut won = 0.0;
                let mut neighbours = Vec::new();
                for ((id, label), &sim) in nb.ids[row.clone()]
                    .iter()
                    .zip(&nb.labels[row.clone()])
                    .zip(&nb.sims[row])
                {
                    let (Some(id), Some(label)) = (id, label) else {
                        continue;
                    };
                    let weight = ballot(sim, how);
                    total += weight;
                    if *label == class {
                        won += weight;
                    }
                    neighbours.push(Neighbour {
                        id: *id,
                        class: *label,
                        score: sim,
                    });
                }
                let score = match blended {
                    Some(score) => score,
                    None if total > 0.0 => won / total,
                    None => 0.0,
                };
                Prediction {
                    class,
                    score,
                    neighbours,
                }
            })
            .collect())
    }
}

/// Per-class score of query `q`: the blend of its kNN vote share and the softmax of its centre
/// cosines (temperature `spec.temperature`), weighted by `spec.centre_weight`.
fn class_scores(nb: &Neighbours, cos: &Array2<f32>, q: usize, spec: ClassifierSpec) -> Vec<f64> {
    let classes = nb.classes;
    let w = match spec.scoring {
        Scoring::Knn => 0.0,
        Scoring::Centre => 1.0,
        Scoring::Blend => f64::from(spec.centre_weight).clamp(0.0, 1.0),
    };
    let mut knn = vec![0f64; classes];
    let row = q * nb.k_max..q * nb.k_max + spec.k.min(nb.k_max);
    for (label, &sim) in nb.labels[row.clone()].iter().zip(&nb.sims[row]) {
        if let Some(c) = *label {
            knn[c] += ballot(sim, spec.vote);
        }
    }
    let total: f64 = knn.iter().sum();
    let t = f64::from(spec.temperature).max(1e-6);
    let logits: Vec<f64> = (0..classes).map(|c| f64::from(cos[[q, c]]) / t).collect();
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let z: f64 = exp.iter().sum();
    (0..classes)
        .map(|c| {
            let share = if total > 0.0 { knn[c] / total } else { 0.0 };
            (1.0 - w) * share + w * exp[c] / z
        })
        .collect()
}

fn argmax(scores: &[f64]) -> usize {
    scores
        .iter()
        .enumerate()
        .fold(
            (0, f64::MIN),
            |best, (i, &s)| if s > best.1 { (i, s) } else { best },
        )
        .0
}

/// The weight of one neighbour's vote.
pub fn ballot(sim: f32, how: Vote) -> f64 {
    match how {
        Vote::Uniform => 1.0,
        // Similarity + 1 is positive for any cosine, so a far neighbour still counts a little.
        Vote::Weighted => f64::from(sim) + 1.0,
    }
}

/// Predicts one class per query from its `k` nearest neighbours' labels and similarities
/// (row-major `[queries, k_max]`, `None` for missing neighbours); ties go to the class whose
/// best neighbour is nearest.
pub fn vote(
    labels: &[Option<usize>],
    sims: &[f32],
    k_max: usize,
    k: usize,
    classes: usize,
    how: Vote,
) -> Vec<usize> {
    let mut scores = vec![0f64; classes];
    labels
        .chunks(k_max.max(1))
        .zip(sims.chunks(k_max.max(1)))
        .map(|(ls, ss)| {
            scores.iter_mut().for_each(|s| *s = 0.0);
            let mut first_seen = vec![usize::MAX; classes];
            for (rank, (l, &s)) in ls.iter().zip(ss).take(k).enumerate() {
                if let Some(c) = *l {
                    scores[c] += ballot(s, how);
                    first_seen[c] = first_seen[c].min(rank);
                }
            }
            (0..classes)
                .max_by(|&a, &b| {
                    scores[a]
                        .partial_cmp(&scores[b])
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(first_seen[b].cmp(&first_seen[a]))
                })
                .unwrap_or(0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes() {
        // One query, neighbours: class 1 (0.9), class 0 (0.8), class 0 (0.1)
        let labels = [Some(1), Some(0), Some(0)];
        let sims = [0.9, 0.8, 0.1];
        assert_eq!(vote(&labels, &sims, 3, 1, 2, Vote::Uniform), vec![1]);
        assert_eq!(vote(&labels, &sims, 3, 3, 2, Vote::Uniform), vec![0]);
        // Weighted: class 1 = 1.9, class 0 = 1.8 + 1.1 = 2.9.
        assert_eq!(vote(&labels, &sims, 3, 3, 2, Vote::Weighted), vec![0]);
        // Tie at k = 2 (uniform): the nearer neighbour's class wins.
        assert_eq!(vote(&labels, &sims, 3, 2, 2, Vote::Uniform), vec![1]);
        // Missing neighbours are skipped.
        assert_eq!(
            vote(
                &[None, Some(1), None],
                &[0.0, 0.5, 0.0],
                3,
                3,
                2,
                Vote::Uniform
            ),
            vec![1]
        );
    }

    #[test]
    fn centres_and_blends_score_as_documented() {
        // One query; its 3 neighbours say class 1 (0.9), class 0 (0.8), class 0 (0.1); the
        // centres say class 1 clearly.
        let nb = Neighbours {
            ids: vec![Some(0), Some(1), Some(2)],
            labels: vec![Some(1), Some(0), Some(0)],
            sims: vec![0.9, 0.8, 0.1],
            k_max: 3,
            classes: 2,
        };
        let cos = ndarray::array![[0.2f32, 0.9]];
        let spec = |scoring, w| ClassifierSpec {
            k: 3,
            vote: Vote::Weighted,
            scoring,
            centre_weight: w,
            temperature: 0.1,
        };
        // The vote alone: class 0 (2.9 against 1.9).
        assert_eq!(
            Classifier::predict(&nb, Some(&cos), spec(Scoring::Knn, 0.0)),
            [0]
        );
        assert_eq!(
            Classifier::predict(&nb, Some(&cos), spec(Scoring::Blend, 0.0)),
            [0]
        );
        // The centres alone, and a blend leaning on them: class 1.
        assert_eq!(
            Classifier::predict(&nb, Some(&cos), spec(Scoring::Centre, 0.0)),
            [1]
        );
        assert_eq!(
            Classifier::predict(&nb, Some(&cos), spec(Scoring::Blend, 0.5)),
            [1]
        );
        let scores = class_scores(&nb, &cos, 0, spec(Scoring::Blend, 0.5));
        assert!(
            (scores.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{scores:?}"
        );
        // Without centres, every scoring falls back to the vote.
        assert_eq!(
            Classifier::predict(&nb, None, spec(Scoring::Centre, 1.0)),
            [0]
        );
    }
}
