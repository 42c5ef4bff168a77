use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use mlops_core::artifact::{DataDir, DataSummary, Role, ShardPair};
use mlops_core::progress::{self, Progress, Silent};
use mlops_core::{npy, sha256_file, FileEntry, MANIFEST_FILE};
use ndarray::{Array1, Array4, Axis};
use sha2::Digest;

use crate::{Check, Finding, ValidateConfig, ValidationReport};

/// Collects the problems of one check, keeping at most `limit` of them in detail.
struct Tally {
    name: &'static str,
    problems: usize,
    findings: Vec<Finding>,
    limit: usize,
}

impl Tally {
    fn new(name: &'static str, limit: usize) -> Self {
        Tally {
            name,
            problems: 0,
            findings: Vec::new(),
            limit,
        }
    }

    fn fail(&mut self, file: Option<&str>, message: impl Into<String>) {
        self.problems += 1;
        if self.findings.len() < self.limit {
            self.findings.push(Finding {
                file: file.map(str::to_string),
                message: message.into(),
            });
        }
    }

    fn done(self) -> Check {
        Check {
            name: self.name.to_string(),
            passed: self.problems == 0,
            skipped: false,
            problems: self.problems,
            findings: self.findings,
        }
    }

    fn skipped(self, why: &str) -> Check {
        Check {
            name: self.name.to_string(),
            passed: false,
            skipped: true,
            problems: 0,
            findings: vec![Finding {
                file: None,
                message: format!("not run: {why}"),
            }],
        }
    }
}

type ImageDigest = [u8; 32];

/// Where an image was seen: shard file and row.
type Seen = (String, usize);

/// A check: reads what earlier checks learned from the context, reports on its own.
type CheckFn = fn(&mut Context<'_>, Tally) -> Check;

/// Every check, in the order they run (later ones build on what earlier ones learned).
const CHECKS: [(&str, CheckFn); 9] = [
    ("manifest", manifest),
    ("checksums", checksums),
    ("shard_pairing", shard_pairing),
    ("dtype_shape", dtype_shape),
    ("value_range", value_range),
    ("label_range", label_range),
    ("class_coverage", class_coverage),
    ("leakage", leakage),
    ("totals", totals),
];

/// What the checks share: the directory, and what earlier checks found out about it.
struct Context<'a> {
    data: &'a Path,
    config: &'a ValidateConfig,
    /// Set by `manifest`; the other checks only run when it is.
    dir: Option<DataDir>,
    /// Files read, with the checksum they actually have.
    inputs: Vec<FileEntry>,
    /// Every shard pair the manifest lists, set by `shard_pairing`.
    pairs: Vec<(Role, ShardPair)>,
    /// One pass over every shard, made by the first check that needs it.
    scan: Option<Scan>,
    /// Told about the shard scan, the only long part.
    progress: &'a dyn Progress,
}

impl Context<'_> {
    fn tally(&self, name: &'static str) -> Tally {
        Tally::new(name, self.config.max_findings.max(1))
    }

    fn summary(&self) -> &DataSummary {
        &self
            .dir
            .as_ref()
            .expect("checks after `manifest` run only when it passed")
            .summary
    }

    fn scan(&mut self) -> &mut Scan {
        if self.scan.is_none() {
            let scan = Scan::run(self);
            self.scan = Some(scan);
        }
        self.scan.as_mut().expect("just set")
    }
}

/// What reading every shard once found: findings of the three content checks, per-role counts
/// and image digests for the checks after them.
struct Scan {
    dtype_shape: Option<Tally>,
    value_range: Option<Tally>,
    label_range: Option<Tally>,
    /// False when a shard could not be read: counts and digests are then incomplete.
    complete: bool,
    counts: HashMap<Role, Vec<usize>>,
    rows: HashMap<Role, usize>,
    digests: HashMap<Role, Vec<(ImageDigest, Seen)>>,
}

/// Runs every check on the data-stage output in `data`. Never fails: problems are findings.
pub fn validate(data: &Path, config: &ValidateConfig) -> ValidationReport {
    validate_with(data, config, &Silent)
}

/// [`validate`], reporting the scan over the shards to `progress`.
pub fn validate_with(
    data: &Path,
    config: &ValidateConfig,
    progress: &dyn Progress,
) -> ValidationReport {
    let mut ctx = Context {
        data,
        config,
        dir: None,
        inputs: Vec::new(),
        pairs: Vec::new(),
        scan: None,
        progress,
    };
    let mut checks = Vec::new();
    for (name, check) in CHECKS {
        let tally = ctx.tally(name);
        checks.push(check(&mut ctx, tally));
        if ctx.dir.is_none() {
            // Without a readable manifest there is nothing to check the files against.
            break;
        }
    }
    ValidationReport {
        data: data.display().to_string(),
        passed: checks.iter().all(|c| c.passed),
        checks,
        inputs: ctx.inputs,
    }
}

fn manifest(ctx: &mut Context<'_>, mut tally: Tally) -> Check {
    match DataDir::open(ctx.data) {
        Ok(dir) => {
            if dir.summary.classes.is_empty() {
                tally.fail(Some(MANIFEST_FILE), "the manifest lists no classes");
            }
            ctx.dir = Some(dir);
            if let Ok(entry) = FileEntry::input_file(&ctx.data.join(MANIFEST_FILE)) {
                ctx.inputs.push(entry);
            }
        }
        Err(e) => tally.fail(Some(MANIFEST_FILE), e.to_string()),
    }
    tally.done()
}

fn checksums(ctx: &mut Context<'_>, mut tally: Tally) -> Check {
    let data = ctx.data;
    let outputs = ctx
        .dir
        .as_ref()
        .map(|d| d.manifest.outputs.clone())
        .unwrap_or_default();
    for entry in &outputs {
        let path = data.join(&entry.path);
        match sha256_file(&path) {
            Ok(actual) if actual == entry.sha256 => {}
            Ok(actual) => tally.fail(
                Some(&entry.path),
                format!(
                    "sha256 {actual} differs from the manifest's {}: the file was modified or corrupted",
                    entry.sha256
                ),
            ),
            Err(e) => tally.fail(Some(&entry.path), format!("cannot read: {e}")),
        }
        if let Ok(mut input) = FileEntry::input_file(&path) {
            input.path = path.display().to_string();
            ctx.inputs.push(input);
        }
    }
    tally.done()
}

fn shard_pairing(ctx: &mut Context<'_>, mut tally: Tally) -> Check {
    let data = ctx.data;
    let dir = ctx.dir.as_ref().expect("manifest passed");
    let listed: BTreeSet<&str> = dir
        .manifest
        .outputs
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    let mut pairs = Vec::new();
    for role in Role::ALL {
        let Some(rs) = dir.summary.role(role) else {
            tally.fail(
                Some(MANIFEST_FILE),
                format!("the manifest has no {role} role"),
            );
            continue;
        };
        for (i, pair) in rs.shards.iter().enumerate() {
            for (name, expected) in [
                (&pair.images, role.images_file(i)),
                (&pair.labels, role.labels_file(i)),
            ] {
                if *name != expected {
                    tally.fail(
                        Some(name),
                        format!("expected shard {i} of {role} to be {expected}"),
                    );
                }
                if !data.join(name).is_file() {
                    tally.fail(Some(name), "shard file is missing");
                } else if !listed.contains(name.as_str()) {
                    tally.fail(Some(name), "shard file has no checksum in the manifest");
                }
            }
            pairs.push((role, pair.clone()));
        }
    }
    let paired: BTreeSet<&str> = pairs
        .iter()
        .flat_map(|(_, p)| [p.images.as_str(), p.labels.as_str()])
        .collect();
    if let Ok(entries) = std::fs::read_dir(data) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_shard = name.ends_with(".npy")
                && Role::ALL.iter().any(|r| name.starts_with(&format!("{r}_")));
            if is_shard && !paired.contains(name.as_str()) {
                tally.fail(
                    Some(&name),
                    "shard file not listed in the manifest (left over or injected)",
                );
            }
        }
    }
    ctx.pairs = pairs;
    tally.done()
}

fn dtype_shape(ctx: &mut Context<'_>, _: Tally) -> Check {
    ctx.scan().dtype_shape.take().expect("taken once").done()
}

fn value_range(ctx: &mut Context<'_>, _: Tally) -> Check {
    ctx.scan().value_range.take().expect("taken once").done()
}

fn label_range(ctx: &mut Context<'_>, _: Tally) -> Check {
    ctx.scan().label_range.take().expect("taken once").done()
}

const INCOMPLETE: &str = "some shards could not be read (see dtype_shape)";

fn class_coverage(ctx: &mut Context<'_>, mut tally: Tally) -> Check {
    let min = ctx.config.min_per_class.max(1);
    let summary = ctx.summary().clone();
    let scan = ctx.scan();
    if !scan.complete {
        return tally.skipped(INCOMPLETE);
    }
    let empty = vec![0; summary.classes.len()];
    for role in Role::ALL {
        let role_counts = scan.counts.get(&role).unwrap_or(&empty);
        for (class, &n) in role_counts.iter().enumerate() {
            if n < min {
                tally.fail(
                    None,
                    format!(
                        "class {class} ({}) has {n} images in {role}, fewer than {min}",
                        summary.classes[class]
                    ),
                );
            }
        }
    }
    tally.done()
}

fn leakage(ctx: &mut Context<'_>, mut tally: Tally) -> Check {
    let scan = ctx.scan();
    if !scan.complete {
        return tally.skipped(INCOMPLETE);
    }
    let digests = &scan.digests;
    let index = |role: Role| -> HashMap<ImageDigest, &Seen> {
        digests
            .get(&role)
            .map(|v| v.iter().map(|(d, s)| (*d, s)).collect())
            .unwrap_or_default()
    };
    let pairs = [
        (Role::Test, vec![Role::Train, Role::Val, Role::Gallery]),
        (Role::Train, vec![Role::Val]),
    ];
    for (held, others) in pairs {
        let held_index = index(held);
        for other in others {
            for (digest, (file, row)) in digests.get(&other).into_iter().flatten() {
                if let Some((held_file, held_row)) = held_index.get(digest) {
                    tally.fail(
                        Some(file),
                        format!("row {row} ({other}) is identical to {held_file} row {held_row} ({held})"),
                    );
                }
            }
        }
    }
    tally.done()
}

fn totals(ctx: &mut Context<'_>, mut tally: Tally) -> Check {
    let summary = ctx.summary().clone();
    let scan = ctx.scan();
    if !scan.complete {
        return tally.skipped(INCOMPLETE);
    }
    for role in Role::ALL {
        let Some(rs) = summary.role(role) else {
            continue;
        };
        let actual = scan.rows.get(&role).copied().unwrap_or(0);
        let listed: usize = rs.shards.iter().map(|s| s.rows).sum();
        if actual != rs.rows || listed != rs.rows {
            tally.fail(
                Some(MANIFEST_FILE),
                format!(
                    "{role} has {actual} rows in its shards, the manifest says {}",
                    rs.rows
                ),
            );
        }
        let empty = vec![0; summary.classes.len()];
        let actual_counts = scan.counts.get(&role).unwrap_or(&empty);
        if *actual_counts != rs.class_counts {
            tally.fail(
                Some(MANIFEST_FILE),
                format!(
                    "{role} per-class counts {actual_counts:?} differ from the manifest's {:?}",
                    rs.class_counts
                ),
            );
        }
    }
    tally.done()
}

impl Scan {
    /// Reads every listed shard once: headers, values, labels, per-role counts, image digests.
    fn run(ctx: &Context<'_>) -> Scan {
        let summary = ctx.summary();
        let data = ctx.data;
        let mut dtype_shape = ctx.tally(CHECKS[3].0);
        let mut value_range = ctx.tally(CHECKS[4].0);
        let mut label_range = ctx.tally(CHECKS[5].0);
        let n_classes = summary.classes.len();
        let [lo, hi] = summary.value_range;
        let tolerance = ctx.config.range_tolerance;
        let (lo, hi) = (lo - tolerance, hi + tolerance);
        let mut scan = Scan {
            dtype_shape: None,
            value_range: None,
            label_range: None,
            complete: true,
            counts: HashMap::new(),
            rows: HashMap::new(),
            digests: HashMap::new(),
        };
        let task = progress::start(ctx.progress, "validate", ctx.pairs.len() as u64);
        for (role, pair) in &ctx.pairs {
            task.inc(1);
            let role = *role;
            let images_ok = check_header(
                data,
                &pair.images,
                "<f4",
                &shard_shape(summary, pair.rows),
                &mut dtype_shape,
            );
            let labels_ok = check_header(data, &pair.labels, "<i8", &[pair.rows], &mut dtype_shape);
            if pair.rows == 0 || pair.rows > summary.npy_interval {
                dtype_shape.fail(
                    Some(&pair.images),
                    format!(
                        "{} rows, expected 1..={} (npy_interval)",
                        pair.rows, summary.npy_interval
                    ),
                );
            }
            if !(images_ok && labels_ok) {
                scan.complete = false;
                continue;
            }
            let (images, labels) = match (
                npy::read::<f32, ndarray::Ix4>(&data.join(&pair.images)),
                npy::read::<i64, ndarray::Ix1>(&data.join(&pair.labels)),
            ) {
                (Ok(images), Ok(labels)) => (images, labels),
                (Err(e), _) | (_, Err(e)) => {
                    dtype_shape.fail(None, e.to_string());
                    scan.complete = false;
                    continue;
                }
            };
            check_values(&images, &pair.images, lo, hi, &mut value_range);
            let role_counts = scan
                .counts
                .entry(role)
                .or_insert_with(|| vec![0; n_classes]);
            check_labels(
                &labels,
                &pair.labels,
                n_classes,
                role_counts,
                &mut label_range,
            );
            *scan.rows.entry(role).or_default() += labels.len();
            let seen = scan.digests.entry(role).or_default();
            digest_rows(&images, &pair.images, seen);
        }
        drop(task);
        scan.dtype_shape = Some(dtype_shape);
        scan.value_range = Some(value_range);
        scan.label_range = Some(label_range);
        scan
    }
}

/// The sha256 of every image of a shard, with where it was seen.
fn digest_rows(images: &Array4<f32>, file: &str, seen: &mut Vec<(ImageDigest, Seen)>) {
    for (row, image) in images.axis_iter(Axis(0)).enumerate() {
        let bytes: Vec<u8> = image.iter().flat_map(|v| v.to_le_bytes()).collect();
        seen.push((sha2::Sha256::digest(&bytes).into(), (file.to_owned(), row)));
    }
}

fn shard_shape(summary: &DataSummary, rows: usize) -> Vec<usize> {
    let [c, h, w] = summary.image_shape;
    vec![rows, c, h, w]
}

fn check_header(data: &Path, name: &str, descr: &str, shape: &[usize], tally: &mut Tally) -> bool {
    let header = match npy::read_header(&data.join(name)) {
        Ok(header) => header,
        Err(e) => {
            tally.fail(Some(name), e.to_string());
            return false;
        }
    };
    let mut ok = true;
    if header.descr != descr {
        let expected = if descr == "<f4" { "float32" } else { "int64" };
        tally.fail(
            Some(name),
            format!("dtype is {}, expected {expected}", header.dtype_name()),
        );
        ok = false;
    }
    if header.shape != shape {
        tally.fail(
            Some(name),
            format!("shape is {:?}, expected {shape:?}", header.shape),
        );
        ok = false;
    }
    if header.fortran_order {
        tally.fail(Some(name), "array is in Fortran order, expected C order");
        ok = false;
    }
    ok
}

fn check_values(images: &Array4<f32>, name: &str, lo: f32, hi: f32, tally: &mut Tally) {
    let (mut non_finite, mut outside) = (0usize, 0usize);
    let mut first = None;
    for (row, image) in images.axis_iter(Axis(0)).enumerate() {
        for &v in image.iter() {
            if !v.is_finite() {
                non_finite += 1;
                first.get_or_insert((row, v));
            } else if v < lo || v > hi {
                outside += 1;
                first.get_or_insert((row, v));
            }
        }
    }
    if let Some((row, v)) = first {
        tally.fail(
            Some(name),
            format!(
                "{non_finite} non-finite and {outside} out-of-range values (allowed [{lo}, {hi}]); first at row {row}: {v}"
            ),
        );
    }
}

fn check_labels(
    labels: &Array1<i64>,
    name: &str,
    n_classes: usize,
    counts: &mut [usize],
    tally: &mut Tally,
) {
    let mut bad = Vec::new();
    for (row, &label) in labels.iter().enumerate() {
        match usize::try_from(label) {
            Ok(l) if l < n_classes => counts[l] += 1,
            _ => bad.push((row, label)),
        }
    }
    if let Some((row, label)) = bad.first() {
        tally.fail(
            Some(name),
            format!(
                "{} labels outside 0..{n_classes}; first at row {row}: {label}",
                bad.len()
            ),
        );
    }
}
