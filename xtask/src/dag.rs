//! The one description of the pipeline: its stages, their binaries, inputs and outputs,
//! resources and the deploy condition. The local runner (`cargo xtask pipeline`) and the
//! Kubeflow spec (`cargo xtask kfp`) are both generated from [`STAGES`]; there is no second
//! hand-kept copy.

/// Where a stage argument's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// The output directory of an earlier stage.
    Stage(&'static str),
    /// Every data source (the flag repeats per source).
    Sources,
    /// The model registry.
    Registry,
    /// The model's name in the registry.
    ModelName,
    /// The evaluation of the currently deployed version, when there is one (regression guard).
    DeployedEval,
    /// The currently deployed version, when there is one: its model embeds the test images too
    /// (the gate's paired comparison).
    DeployedModel,
}

/// A step's computing needs (Kubeflow resources).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub cpu: &'static str,
    pub memory: &'static str,
    /// GPUs requested in Kubeflow (the local runner uses what the machine has).
    pub gpus: u32,
}

/// A Kubeflow output parameter a stage writes (flag giving the file path, parameter name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputParam {
    pub flag: &'static str,
    pub name: &'static str,
}

/// One stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub name: &'static str,
    pub binary: &'static str,
    /// Arguments before the flags (`register` for the deploy step).
    pub subcommand: &'static [&'static str],
    /// `--flag value` pairs.
    pub inputs: &'static [(&'static str, Value)],
    /// Its output directory's flag, if it has one.
    pub out_flag: Option<&'static str>,
    /// Fixed flags.
    pub fixed: &'static [&'static str],
    /// Output parameters for Kubeflow.
    pub outputs: &'static [OutputParam],
    pub resources: Resources,
    /// Runs only when the eval stage decided to deploy.
    pub when_deploy: bool,
}

const SMALL: Resources = Resources {
    cpu: "1",
    memory: "2Gi",
    gpus: 0,
};

/// The pipeline, in order; each stage depends on the stages its inputs name.
pub const STAGES: [Stage; 7] = [
    Stage {
        name: "data",
        binary: "mlops-data",
        subcommand: &[],
        inputs: &[("--source", Value::Sources)],
        out_flag: Some("--out"),
        fixed: &[],
        outputs: &[],
        resources: Resources {
            cpu: "2",
            memory: "4Gi",
            gpus: 0,
        },
        when_deploy: false,
    },
    Stage {
        name: "validate",
        binary: "mlops-validate",
        subcommand: &[],
        inputs: &[("--data", Value::Stage("data"))],
        out_flag: Some("--out"),
        fixed: &[],
        outputs: &[],
        resources: SMALL,
        when_deploy: false,
    },
    Stage {
        name: "train",
        binary: "mlops-train",
        subcommand: &[],
        // Training waits for validation: nothing trains on data that failed its checks.
        inputs: &[
            ("--data", Value::Stage("data")),
            ("--validated", Value::Stage("validate")),
        ],
        out_flag: Some("--out"),
        fixed: &[],
        outputs: &[],
        resources: Resources {
            cpu: "4",
            memory: "8Gi",
            gpus: 1,
        },
        when_deploy: false,
    },
    Stage {
        name: "embed",
        binary: "mlops-embed",
        subcommand: &[],
        inputs: &[
            ("--model", Value::Stage("train")),
            ("--data", Value::Stage("data")),
            ("--baseline", Value::DeployedModel),
        ],
        out_flag: Some("--out"),
        fixed: &[],
        outputs: &[],
        resources: Resources {
            cpu: "2",
            memory: "4Gi",
            gpus: 0,
        },
        when_deploy: false,
    },
    Stage {
        name: "index",
        binary: "mlops-index",
        subcommand: &[],
        inputs: &[("--embeddings", Value::Stage("embed"))],
        out_flag: Some("--out"),
        fixed: &[],
        outputs: &[],
        resources: SMALL,
        when_deploy: false,
    },
    Stage {
        name: "eval",
        binary: "mlops-eval",
        subcommand: &[],
        inputs: &[
            ("--index", Value::Stage("index")),
            ("--embeddings", Value::Stage("embed")),
            ("--current", Value::DeployedEval),
        ],
        out_flag: Some("--out"),
        fixed: &[],
        outputs: &[
            OutputParam {
                flag: "--decision-output",
                name: "decision",
            },
            OutputParam {
                flag: "--accuracy-output",
                name: "accuracy",
            },
        ],
        resources: SMALL,
        when_deploy: false,
    },
    Stage {
        name: "deploy",
        binary: "mlops-deploy",
        subcommand: &["register"],
        inputs: &[
            ("--model", Value::Stage("train")),
            ("--index", Value::Stage("index")),
            ("--eval", Value::Stage("eval")),
            ("--registry", Value::Registry),
            ("--name", Value::ModelName),
        ],
        out_flag: None,
        fixed: &["--promote"],
        outputs: &[OutputParam {
            flag: "--version-output",
            name: "version",
        }],
        resources: SMALL,
        when_deploy: true,
    },
];

/// The stage called `name`.
pub fn stage(name: &str) -> Option<&'static Stage> {
    STAGES.iter().find(|s| s.name == name)
}

impl Stage {
    /// The stages this one reads.
    pub fn upstream(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .inputs
            .iter()
            .filter_map(|(_, v)| match v {
                Value::Stage(s) => Some(*s),
                _ => None,
            })
            .collect();
        if self.when_deploy {
            names.push("eval");
        }
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Whether this stage comes at or after `other` in the pipeline (for `--force STAGE`).
    pub fn at_or_after(&self, other: &str) -> bool {
        let position = |n: &str| STAGES.iter().position(|s| s.name == n);
        match (position(self.name), position(other)) {
            (Some(a), Some(b)) => a >= b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_only_read_earlier_stages() {
        for (i, s) in STAGES.iter().enumerate() {
            for up in s.upstream() {
                let j = STAGES
                    .iter()
                    .position(|t| t.name == up)
                    .expect("known stage");
                assert!(j < i, "{} reads {up}, which runs later", s.name);
            }
        }
        assert_eq!(stage("embed").unwrap().upstream(), ["data", "train"]);
        assert!(stage("eval").unwrap().at_or_after("train"));
        assert!(!stage("data").unwrap().at_or_after("train"));
    }
}
