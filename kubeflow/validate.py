"""Validates kubeflow/pipeline.yaml with the real kfp SDK (used by xtask's tests).

ParseDict is strict about unknown fields but checks no references, so this also checks that
every componentRef / executorLabel / dependentTask / producerTask exists and the DAGs have no
cycles, then loads the file as kfp does.
"""

import sys

import yaml
from google.protobuf import json_format
from kfp.components import load_component_from_file
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

path = sys.argv[1]
with open(path) as f:
    spec, platform = list(yaml.safe_load_all(f))

json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
for name, config in executors.items():
    json_format.ParseDict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    assert name in spec["deploymentSpec"]["executors"], f"platform executor {name} is unknown"

components = spec["components"]
for name, comp in components.items():
    if "executorLabel" in comp:
        assert comp["executorLabel"] in spec["deploymentSpec"]["executors"], f"{name}: executor missing"
    else:
        assert "dag" in comp, f"{name}: neither executor nor dag"


def check_dag(where, dag, inputs):
    tasks = dag["tasks"]
    for tname, task in tasks.items():
        ref = task["componentRef"]["name"]
        assert ref in components, f"{where}/{tname}: component {ref} missing"
        for dep in task.get("dependentTasks", []):
            assert dep in tasks, f"{where}/{tname}: dependent task {dep} missing"
        wanted = components[ref].get("inputDefinitions", {}).get("parameters", {})
        given = task.get("inputs", {}).get("parameters", {})
        assert set(wanted) == set(given), f"{where}/{tname}: inputs {set(given)} != {set(wanted)}"
        for pname, p in given.items():
            if "taskOutputParameter" in p:
                producer = p["taskOutputParameter"]["producerTask"]
                key = p["taskOutputParameter"]["outputParameterKey"]
                assert producer in tasks, f"{where}/{tname}: producer {producer} missing"
                assert producer in task.get("dependentTasks", []), f"{where}/{tname}: {producer} not a dependency"
                outs = components[tasks[producer]["componentRef"]["name"]]["outputDefinitions"]["parameters"]
                assert key in outs, f"{where}/{tname}: {producer} has no output {key}"
            if "componentInputParameter" in p:
                assert p["componentInputParameter"] in inputs, f"{where}/{tname}: no input {p['componentInputParameter']}"
        if "dag" in components[ref]:
            check_dag(f"{where}/{tname}", components[ref]["dag"], components[ref]["inputDefinitions"]["parameters"])
    # No cycles: repeatedly remove tasks whose dependencies are all removed.
    left = {t: set(task.get("dependentTasks", [])) for t, task in tasks.items()}
    while left:
        ready = [t for t, deps in left.items() if not deps & set(left)]
        assert ready, f"{where}: cycle among {sorted(left)}"
        for t in ready:
            del left[t]


check_dag("root", spec["root"]["dag"], spec["root"]["inputDefinitions"]["parameters"])


def conditions(dag):
    """(trigger condition, container tasks under it) for every conditional task, nested too."""
    for task in dag["tasks"].values():
        comp = components[task["componentRef"]["name"]]
        if "triggerPolicy" in task:
            yield task["triggerPolicy"]["condition"], list(leaves(comp))
        if "dag" in comp:
            yield from conditions(comp["dag"])


def leaves(comp):
    for name, task in comp.get("dag", {}).get("tasks", {}).items():
        sub = components[task["componentRef"]["name"]]
        yield from (leaves(sub) if "dag" in sub else [name])


found = list(conditions(spec["root"]["dag"]))
assert any("deploy" in steps for _, steps in found), f"no condition guards the deploy step: {found}"
load_component_from_file(path)
print("ok", len(components), "components")
