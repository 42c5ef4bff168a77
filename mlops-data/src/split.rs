//! Deterministic, stratified assignment of images to roles.

use std::collections::HashSet;

use mlops_core::artifact::data::Dedup;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::source::Loaded;
use crate::Role;

/// Fractions of each class that go to each role.
#[derive(Debug, Clone, Copy)]
pub struct Fractions {
    /// Share of each class (outside the test set) for validation, in `[0, 1)`.
    pub val: f64,
    /// Share of each class (outside the test set) for the gallery, in `[0, 1)`.
    pub gallery: f64,
    /// Only used for images that no IDX test file designates.
    pub test: f64,
}

/// Image indices per role, in [`Role::ALL`] order.
pub type Assignment = [Vec<usize>; 4];

/// Splits `loaded` into roles: per class, a seeded shuffle, then the first images go to test
/// (unless IDX test files designate the test set), then val, then gallery, the rest to train.
/// Each role's list is shuffled too, so every shard mixes classes.
pub fn assign(loaded: &Loaded, fractions: Fractions, keep_idx_test: bool, seed: u64) -> Assignment {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let has_designated = keep_idx_test && loaded.designated_test.iter().any(|t| *t);
    let mut roles: Assignment = Default::default();
    for class in 0..loaded.classes.len() {
        let mut pool: Vec<usize> = Vec::new();
        for (i, &label) in loaded.labels.iter().enumerate() {
            if label != class {
                continue;
            }
            if has_designated && loaded.designated_test[i] {
                roles[Role::Test.index()].push(i);
            } else {
                pool.push(i);
            }
        }
        pool.shuffle(&mut rng);
        let test_fraction = if has_designated { 0.0 } else { fractions.test };
        let mut rest = &pool[..];
        for (role, fraction) in [
            (Role::Test, test_fraction),
            (Role::Val, fractions.val),
            (Role::Gallery, fractions.gallery),
        ] {
            let take = take_count(pool.len(), fraction).min(rest.len());
            roles[role.index()].extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        roles[Role::Train.index()].extend_from_slice(rest);
    }
    for role in roles.iter_mut() {
        role.sort_unstable();
        role.shuffle(&mut rng);
    }
    roles
}

// Rounds, but never starves a role of a class that has enough images to give it one.
fn take_count(n: usize, fraction: f64) -> usize {
    if fraction <= 0.0 {
        return 0;
    }
    let k = (n as f64 * fraction).round() as usize;
    if k == 0 && n >= 4 {
        1
    } else {
        k
    }
}

/// Removes exact duplicates that would leak across roles: any non-test image equal to a test
/// image, and any validation image equal to a training image.
pub fn dedup(loaded: &Loaded, roles: &mut Assignment) -> Dedup {
    let digest = |i: usize| -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(loaded.image(i)).into()
    };
    let test: HashSet<[u8; 32]> = roles[Role::Test.index()]
        .iter()
        .map(|&i| digest(i))
        .collect();
    let mut stats = Dedup::default();
    for role in [Role::Train, Role::Val, Role::Gallery] {
        let list = &mut roles[role.index()];
        let before = list.len();
        list.retain(|&i| !test.contains(&digest(i)));
        stats.dropped_matching_test += before - list.len();
    }
    let train: HashSet<[u8; 32]> = roles[Role::Train.index()]
        .iter()
        .map(|&i| digest(i))
        .collect();
    let val = &mut roles[Role::Val.index()];
    let before = val.len();
    val.retain(|&i| !train.contains(&digest(i)));
    stats.dropped_val_matching_train = before - val.len();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(per_class: usize, classes: usize) -> Loaded {
        let mut l = Loaded {
            height: 1,
            width: 2,
            ..Default::default()
        };
        for c in 0..classes {
            l.classes.push(c.to_string());
            for i in 0..per_class {
                l.pixels.extend_from_slice(&[c as u8, i as u8]);
                l.labels.push(c);
                l.designated_test.push(false);
            }
        }
        l
    }

    const F: Fractions = Fractions {
        val: 0.1,
        gallery: 0.2,
        test: 0.2,
    };

    #[test]
    fn stratified_and_deterministic() {
        let l = loaded(50, 3);
        let a = assign(&l, F, true, 7);
        assert_eq!(a, assign(&l, F, true, 7));
        assert_ne!(a, assign(&l, F, true, 8));
        let counts: Vec<usize> = a.iter().map(Vec::len).collect();
        assert_eq!(counts, vec![3 * 25, 3 * 5, 3 * 10, 3 * 10]);
        for role in &a {
            for c in 0..3 {
                assert!(role.iter().any(|&i| l.labels[i] == c));
            }
        }
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        assert_eq!(all, (0..150).collect::<Vec<_>>());
    }

    #[test]
    fn designated_test_stays_test() {
        let mut l = loaded(20, 2);
        for i in [0, 1, 20, 21] {
            l.designated_test[i] = true;
        }
        let a = assign(&l, F, true, 1);
        let mut test = a[Role::Test.index()].clone();
        test.sort_unstable();
        assert_eq!(test, vec![0, 1, 20, 21]);
        let a = assign(&l, F, false, 1);
        assert_eq!(a[Role::Test.index()].len(), 8);
    }

    #[test]
    fn dedup_removes_leaks() {
        let mut l = loaded(20, 2);
        // image 5 becomes a copy of image 3
        l.pixels[10] = l.pixels[6];
        l.pixels[11] = l.pixels[7];
        // image 7 becomes a copy of image 6
        l.pixels[14] = l.pixels[12];
        l.pixels[15] = l.pixels[13];
        let mut a: Assignment = [vec![3, 6], vec![5, 7], vec![], vec![5, 8]];
        let stats = dedup(&l, &mut a);
        assert_eq!(stats.dropped_matching_test, 2);
        assert_eq!(stats.dropped_val_matching_train, 1);
        assert_eq!(a[Role::Train.index()], vec![6]);
        assert!(a[Role::Val.index()].is_empty());
        assert_eq!(a[Role::Test.index()], vec![5, 8]);
    }
}
