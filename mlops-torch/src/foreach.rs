//! Multi-tensor updates through libtorch's `_foreach_*` ops (`cpp/foreach.cpp`; tch has no
//! binding): one GPU launch per operation for all parameters instead of one per parameter.
//! Bit-identical to the same arithmetic written tensor by tensor.

use std::ffi::{c_char, c_int, c_void, CStr};

use tch::Tensor;

extern "C" {
    fn mlops_sgd_step(
        params: *const *const c_void,
        grads: *const *const c_void,
        bufs: *const *const c_void,
        n: i64,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: c_int,
        err: *mut c_char,
        err_len: i64,
    ) -> c_int;
    fn mlops_lerp(
        targets: *const *const c_void,
        sources: *const *const c_void,
        n: i64,
        weight: f64,
        err: *mut c_char,
        err_len: i64,
    ) -> c_int;
    fn mlops_zero(tensors: *const *const c_void, n: i64, err: *mut c_char, err_len: i64) -> c_int;
}

/// The C++ side's `at::Tensor*` for each tensor (tch's `C_tensor` is an `at::Tensor`).
fn pointers(ts: &[Tensor]) -> Vec<*const c_void> {
    ts.iter().map(|t| t.as_ptr().cast::<c_void>()).collect()
}

/// Calls a shim function with a buffer for its error message; a failure becomes a panic naming
/// `what`.
fn shim(what: &str, call: impl FnOnce(*mut c_char, i64) -> c_int) {
    let mut err = [0 as c_char; 512];
    if call(err.as_mut_ptr(), err.len() as i64) != 0 {
        // SAFETY: the shim wrote a NUL-terminated message into `err` (it always terminates).
        let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        // Like tch's non-`f_` methods: libtorch's failure becomes a panic, which
        // `mlops_torch::catch` turns into an error at the stage's boundary.
        panic!("{what}: {message}");
    }
}

/// SGD with momentum over `params` (updated in place), their `grads` and momentum `bufs`
/// (updated in place), all on one device:
/// `d = g + p * weight_decay`, `m = m * momentum + d`,
/// `p -= (nesterov ? d + m * momentum : m) * lr`.
///
/// # Panics
/// When the lists differ in length or libtorch refuses them (devices, shapes, dtypes).
pub fn sgd_step(
    params: &[Tensor],
    grads: &[Tensor],
    bufs: &[Tensor],
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
) {
    assert!(
        params.len() == grads.len() && params.len() == bufs.len(),
        "sgd_step: {} params, {} grads, {} buffers",
        params.len(),
        grads.len(),
        bufs.len()
    );
    let (p, g, m) = (pointers(params), pointers(grads), pointers(bufs));
    // SAFETY: the pointers are live tensors borrowed for the call; the shim copies the handles
    // (reference counts) and writes at most `len` bytes into `err`.
    shim("sgd step", |err, len| unsafe {
        mlops_sgd_step(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            p.len() as i64,
            lr,
            momentum,
            weight_decay,
            c_int::from(nesterov),
            err,
            len,
        )
    });
}

/// `targets[i] += (sources[i] - targets[i]) * weight` in place for every pair (libtorch's
/// `lerp_`, the same arithmetic tensor by tensor).
///
/// # Panics
/// When the lists differ in length or libtorch refuses them.
pub fn lerp(targets: &[Tensor], sources: &[Tensor], weight: f64) {
    assert_eq!(
        targets.len(),
        sources.len(),
        "lerp: lists of different lengths"
    );
    let (t, s) = (pointers(targets), pointers(sources));
    // SAFETY: as in `sgd_step`.
    shim("lerp", |err, len| unsafe {
        mlops_lerp(t.as_ptr(), s.as_ptr(), t.len() as i64, weight, err, len)
    });
}

/// Zeroes every tensor in place.
///
/// # Panics
/// When libtorch refuses them.
pub fn zero(tensors: &[Tensor]) {
    let t = pointers(tensors);
    // SAFETY: as in `sgd_step`.
    shim("zeroing", |err, len| unsafe {
        mlops_zero(t.as_ptr(), t.len() as i64, err, len)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The tensor-by-tensor SGD this replaces, kept here as the reference.
    fn reference(
        p: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        lr: f64,
        mom: f64,
        wd: f64,
        nesterov: bool,
    ) {
        tch::no_grad(|| {
            let g = if wd > 0.0 {
                g + &*p * wd
            } else {
                g.shallow_clone()
            };
            *m *= mom;
            *m += &g;
            let update = if nesterov {
                &g + &*m * mom
            } else {
                m.shallow_clone()
            };
            *p -= update * lr;
        });
    }

    fn tensors(seed: i64, shapes: &[&[i64]]) -> Vec<Tensor> {
        tch::manual_seed(seed);
        shapes
            .iter()
            .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
            .collect()
    }

    #[test]
    fn sgd_step_is_bit_identical_to_the_per_tensor_update() {
        let shapes: [&[i64]; 3] = [&[8, 3, 3, 3], &[8], &[10, 128]];
        for (wd, nesterov) in [(5e-4, true), (0.0, true), (5e-4, false)] {
            let ours = tensors(1, &shapes);
            let mut theirs: Vec<Tensor> = ours.iter().map(Tensor::copy).collect();
            let grads = tensors(2, &shapes);
            let m1 = tensors(3, &shapes);
            let mut m2: Vec<Tensor> = m1.iter().map(Tensor::copy).collect();
            for _ in 0..3 {
                sgd_step(&ours, &grads, &m1, 0.1, 0.9, wd, nesterov);
                for i in 0..3 {
                    reference(
                        &mut theirs[i],
                        &grads[i],
                        &mut m2[i],
                        0.1,
                        0.9,
                        wd,
                        nesterov,
                    );
                }
            }
            for i in 0..3 {
                assert!(
                    ours[i].equal(&theirs[i]),
                    "param {i} (wd {wd}, nesterov {nesterov})"
                );
                assert!(m1[i].equal(&m2[i]), "buffer {i}");
            }
        }
    }

    #[test]
    fn lerp_is_bit_identical_to_the_per_tensor_lerp() {
        let shapes: [&[i64]; 2] = [&[16, 8, 3, 3], &[16]];
        let ours = tensors(8, &shapes);
        let theirs: Vec<Tensor> = ours.iter().map(Tensor::copy).collect();
        let live = tensors(9, &shapes);
        for w in [1e-3, 0.7] {
            lerp(&ours, &live, w);
            for (t, l) in theirs.iter().zip(&live) {
                let _ = t.shallow_clone().lerp_(l, w);
            }
        }
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(a.equal(b));
        }
    }

    #[test]
    fn zero_and_refusals() {
        let t = tensors(4, &[&[3, 2], &[5]]);
        zero(&t);
        assert!(t
            .iter()
            .all(|t| t.abs().sum(Kind::Float).double_value(&[]) == 0.0));
        let bad = std::panic::catch_unwind(|| {
            let p = tensors(5, &[&[3]]);
            let g = tensors(6, &[&[4]]);
            sgd_step(&p, &g, &tensors(7, &[&[3]]), 0.1, 0.9, 0.0, false);
        });
        assert!(bad.is_err(), "mismatched shapes must be refused");
    }
}
