#!/usr/bin/env python3
"""Run a compiled Kubeflow Pipelines v2 IR YAML locally, one container per step.

Uses kfp's own local orchestrator (kfp.local, DockerRunner, kfp 2.17.x) against any
Docker-compatible API: Docker, or `podman system service` with DOCKER_HOST pointing at
its socket. kfp.local is patched in five places so that a local run behaves like the
cluster (each one was seen going wrong with podman 4.3 and kfp 2.17.3; the README's
"Kubeflow's own runner, locally" lists what happened):

  1. Exit status. Stock kfp starts containers with auto_remove=True; podman removes the
     container before kfp reads its status and kfp then assumes exit 0 (failing steps
     "succeed"), or `containers.run` itself dies with a 500 "no such container". Here
     containers are kept until their status and stderr are read, then removed.
  2. command vs ENTRYPOINT. Stock kfp passes `command + args` as the Docker CMD, so an
     image with an ENTRYPOINT runs `ENTRYPOINT command args`. Kubernetes replaces the
     ENTRYPOINT when a container spec has `command`; so does this runner.
  3. Output folders. The cluster launcher creates the folder of every output parameter
     file before the step starts; kfp.local does not. This runner creates them, writable
     by any uid (the steps may run as a non-root user).
  4. PVC mounts. The platform spec's pvcMount entries (kubernetes.mount_pvc) are ignored
     by kfp.local without a warning; this runner bind-mounts a host folder at each
     mountPath, only for the executors that declare it.
  5. Conditions. kfp.local evaluates a triggerPolicy condition against names it can
     resolve in the enclosing DAG; a name it cannot resolve makes the condition False and
     the branch is silently skipped. This runner makes that an error instead.

Images are never pulled: each must already be in local storage (or be overridden with
--image). Exit status: 0 when the pipeline succeeded, 1 when a step failed (its stderr is
printed), 2 on a usage/setup error.

`cargo xtask kfp --run-local` starts podman's API service and runs this script on the
committed kubeflow/pipeline.yaml. By hand:
  podman system service --time=0 unix:///tmp/podman.sock &
  DOCKER_HOST=unix:///tmp/podman.sock python kubeflow/run_local.py kubeflow/pipeline.yaml \
      --mount /tmp/artifacts --pipeline-root /tmp/kfp-root \
      --image train=localhost/mlops-train:TAG ... --param train_settings='epochs = 2'

The patches reach into kfp.local's internals: the set-up venv pins kfp 2.17.3, the version
they were written against.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import docker
import yaml
from kfp import components
from kfp import local
from kfp.local import docker_task_handler
from kfp.local import executor_input_utils
from kfp.local.orchestrator import enhanced_dag_orchestrator
from kfp.local.orchestrator import task_executor

STDERR_TAIL_LINES = 60


# --------------------------------------------------------------------------------------
# Run state shared by the patches
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class TaskRecord:
    """What happened to one container task."""
    path: str  # DAG path, e.g. "gate-deploy/condition-deploy/deploy"
    state: str = 'RUNNING'  # SUCCEEDED | FAILED
    seconds: float = 0.0
    exit_code: Optional[int] = None
    outputs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    stderr_tail: str = ''
    error: str = ''  # an exception raised while starting/running the container


class RunState:
    """Configuration and results of one local run (the patches read and fill it)."""

    def __init__(self, executor_mounts: Dict[str, List[docker.types.Mount]]):
        self.executor_mounts = executor_mounts  # executor label -> bind mounts
        self.records: List[TaskRecord] = []
        self.conditions: List[Tuple[str, bool]] = []
        self.job_uuid: Optional[str] = None
        self._local = threading.local()  # ParallelFor runs tasks on threads

    @property
    def dag_stack(self) -> List[str]:
        """Names of the DAG tasks enclosing the task run on this thread (a ParallelFor
        iteration, run on a worker thread, starts a fresh path)."""
        if not hasattr(self._local, 'dag_stack'):
            self._local.dag_stack = []
        return self._local.dag_stack

    @property
    def current(self):
        """(record, has_command, mounts) of the container task run on this thread."""
        return getattr(self._local, 'current', None)

    @contextlib.contextmanager
    def task(self, record: TaskRecord, has_command: bool, mounts):
        self._local.current = (record, has_command, mounts)
        try:
            yield
        finally:
            self._local.current = None


STATE: Optional[RunState] = None


class UnresolvedConditionError(RuntimeError):
    """A triggerPolicy condition names a value kfp.local cannot resolve."""


# --------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------


def run_container(client: docker.DockerClient, image: str, command: List[str],
                  volumes: Dict[str, Any], **run_args) -> int:
    """Replaces kfp.local.docker_task_handler.run_docker_container.

    Runs one step and returns its real exit status (patches 1, 2 and 4).
    """
    record, has_command, mounts = STATE.current
    image = docker_task_handler.add_latest_tag_if_not_present(image)
    try:
        client.images.get(image)  # resolves short names the way the engine does
    except docker.errors.ImageNotFound:
        raise RuntimeError(
            f'image {image!r} is not in local storage (this runner never pulls); '
            'build/tag it or map the step to another image with --image STEP=IMAGE'
        ) from None

    if has_command:
        # Kubernetes semantics: the spec's command replaces the image ENTRYPOINT.
        run_args['entrypoint'] = command
        command = []
    run_args['mounts'] = list(run_args.get('mounts') or []) + mounts

    container = client.containers.run(
        image=image, command=command, volumes=volumes, detach=True,
        auto_remove=False, **run_args)
    try:
        exit_code = _follow_until_exit(container)
        record.exit_code = exit_code
        if exit_code != 0:
            stderr = container.logs(stdout=False, stderr=True).decode(errors='replace')
            record.stderr_tail = '\n'.join(stderr.splitlines()[-STDERR_TAIL_LINES:])
        return exit_code
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def _follow_until_exit(container) -> int:
    """Prints the step's output as it comes and returns its exit status.

    The container's exit ends the step, not the end of the log stream: podman's followed log
    stream can miss the end of a container that exits at once (a step failing on bad input)
    and then never closes, which hung the whole run. What the stream had not printed by then
    comes from one plain read of the logs.
    """
    printed = bytearray()

    def pump():
        with contextlib.suppress(Exception):
            for chunk in container.logs(stream=True, follow=True):
                printed.extend(chunk)
                print(chunk.decode(errors='replace'), end='')

    follower = threading.Thread(target=pump, daemon=True)
    follower.start()
    exit_code = container.wait()['StatusCode']
    follower.join(timeout=5)
    if follower.is_alive():
        everything = container.logs(stdout=True, stderr=True)
        if everything.startswith(bytes(printed)):
            print(everything[len(printed):].decode(errors='replace'), end='')
    return exit_code


_orig_construct_executor_input = executor_input_utils.construct_executor_input


def construct_executor_input(*args, **kwargs):
    """Wraps kfp.local's executor-input builder to create the output folders (patch 3),
    as the cluster launcher does, writable by the (possibly non-root) step user."""
    executor_input = _orig_construct_executor_input(*args, **kwargs)
    folders = {os.path.dirname(p.output_file)
               for p in executor_input.outputs.parameters.values()}
    folders.add(os.path.dirname(executor_input.outputs.output_file))
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, 0o777)
    return executor_input


_orig_execute_single_task = task_executor.execute_single_task


def execute_single_task(task_name, task_spec, pipeline_resource_name, components,
                        executors, io_store, pipeline_root, runner,
                        unique_pipeline_id, fail_stack):
    """Wraps kfp.local's per-container-task entry point: records state, time, outputs
    and gives run_container the task's executor details."""
    STATE.job_uuid = unique_pipeline_id
    label = components[task_spec.component_ref.name].executor_label
    container = executors[label].container
    record = TaskRecord(path='/'.join(STATE.dag_stack + [task_name]))
    STATE.records.append(record)
    start = time.monotonic()
    try:
        with STATE.task(record, bool(container.command),
                        STATE.executor_mounts.get(label, [])):
            outputs, task_status = _orig_execute_single_task(
                task_name, task_spec, pipeline_resource_name, components, executors,
                io_store, pipeline_root, runner, unique_pipeline_id, fail_stack)
    except Exception as e:
        record.state, record.error = 'FAILED', f'{type(e).__name__}: {e}'
        raise
    finally:
        record.seconds = time.monotonic() - start
    record.state = task_status.name.replace('SUCCESS', 'SUCCEEDED').replace(
        'FAILURE', 'FAILED')
    record.outputs = dict(outputs)
    return outputs, task_status


_orig_execute_task = enhanced_dag_orchestrator.execute_task


def execute_task(task_name, task_spec, *args, **kwargs):
    """Wraps the control-flow orchestrator's dispatcher to track the DAG path."""
    component = kwargs['components'][task_spec.component_ref.name]
    if component.WhichOneof('implementation') != 'dag':
        return _orig_execute_task(task_name, task_spec, *args, **kwargs)
    STATE.dag_stack.append(task_name)
    try:
        return _orig_execute_task(task_name, task_spec, *args, **kwargs)
    finally:
        STATE.dag_stack.pop()


_Evaluator = enhanced_dag_orchestrator.ConditionEvaluator
_orig_resolve = _Evaluator._resolve_pipeline_channel
_orig_evaluate = _Evaluator.evaluate_condition
_unresolved = threading.local()


def resolve_pipeline_channel(channel_ref, io_store):
    value = _orig_resolve(channel_ref, io_store)
    if value is None:
        _unresolved.names.append(channel_ref)
    return value


def evaluate_condition(condition, io_store):
    """Evaluates like kfp.local, but an unresolvable name is an error (patch 5)."""
    _unresolved.names = []
    result = _orig_evaluate(condition, io_store)
    if _unresolved.names:
        raise UnresolvedConditionError(
            f'condition {condition!r}: kfp.local cannot resolve {_unresolved.names} '
            '(it would silently skip the branch). Put the condition inside a nested DAG '
            'that receives the value as one of its own input parameters.')
    STATE.conditions.append((condition, result))
    print(f'condition {condition!r} -> {result}')
    return result


def install_patches():
    docker_task_handler.run_docker_container = run_container
    executor_input_utils.construct_executor_input = construct_executor_input
    task_executor.execute_single_task = execute_single_task
    enhanced_dag_orchestrator.execute_task = execute_task
    _Evaluator._resolve_pipeline_channel = staticmethod(resolve_pipeline_channel)
    _Evaluator.evaluate_condition = staticmethod(evaluate_condition)


# --------------------------------------------------------------------------------------
# Reading the YAML
# --------------------------------------------------------------------------------------


def apply_image_overrides(spec: dict, overrides: Dict[str, str]) -> None:
    """--image STEP=IMAGE: STEP is an executor label (exec-train) or its suffix (train)."""
    executors = spec['deploymentSpec']['executors']
    for step, image in overrides.items():
        label = step if step in executors else f'exec-{step}'
        if label not in executors:
            sys.exit(f'--image {step}: no executor {label!r} (have {sorted(executors)})')
        executors[label]['container']['image'] = image


def pvc_mounts(platform: Optional[dict], pvc_dirs: Dict[str, str],
               default_dir: Optional[str]) -> Dict[str, List[docker.types.Mount]]:
    """Bind mounts standing in for the platform spec's pvcMount entries."""
    executors = ((platform or {}).get('platforms', {}).get('kubernetes', {})
                 .get('deploymentSpec', {}).get('executors', {}))
    result: Dict[str, List[docker.types.Mount]] = {}
    for label, config in executors.items():
        for pvc in config.get('pvcMount', []):
            name = (pvc.get('pvcNameParameter', {}).get('runtimeValue', {})
                    .get('constant') or pvc.get('constant'))
            host_dir = pvc_dirs.get(name, default_dir)
            if host_dir is None:
                sys.exit(f'{label} mounts PVC {name!r} at {pvc["mountPath"]}: '
                         'give --mount DIR or --pvc NAME=DIR')
            result.setdefault(label, []).append(docker.types.Mount(
                target=pvc['mountPath'], source=os.path.abspath(host_dir),
                type='bind', read_only=bool(pvc.get('readOnly'))))
    return result


def typed_arguments(spec: dict, raw: Dict[str, str]) -> Dict[str, Any]:
    """--param NAME=VALUE converted to the root input's declared parameterType."""
    declared = spec['root'].get('inputDefinitions', {}).get('parameters', {})
    result = {}
    for name, value in raw.items():
        if name not in declared:
            sys.exit(f'--param {name}: the pipeline has no such input '
                     f'(have {sorted(declared)})')
        kind = declared[name]['parameterType']
        result[name] = {
            'STRING': str, 'NUMBER_INTEGER': int, 'NUMBER_DOUBLE': float,
            'BOOLEAN': lambda v: v.lower() in ('1', 'true', 'yes'),
        }.get(kind, json.loads)(value)
    return result


def container_task_paths(spec: dict) -> List[str]:
    """Every container task in the IR, as a DAG path, in document order."""
    comps = spec.get('components', {})

    def walk(dag: dict, prefix: str):
        for name, task in dag.get('tasks', {}).items():
            comp = comps[task['componentRef']['name']]
            if 'dag' in comp:
                yield from walk(comp['dag'], f'{prefix}{name}/')
            else:
                yield prefix + name

    return list(walk(spec['root']['dag'], ''))


def write_summary(path: str, spec: dict, elapsed: float, error: Optional[Exception],
                  ran: set) -> None:
    """The run as JSON, for the program that started this runner (`cargo xtask kfp`)."""
    summary = {
        'pipeline': spec['pipelineInfo']['name'],
        'job_uuid': STATE.job_uuid,
        'seconds': elapsed,
        'status': 'FAILED' if error else 'SUCCEEDED',
        'error': re.sub(r'\x1b\[[0-9;]*m', '', str(error)) if error else None,
        'tasks': [dataclasses.asdict(r) for r in STATE.records],
        'not_run': [p for p in container_task_paths(spec) if p not in ran],
        'conditions': [{'condition': c, 'result': r} for c, r in STATE.conditions],
    }
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(summary, f, indent=2, default=str)
    os.replace(tmp, path)


def key_value(text: str) -> Tuple[str, str]:
    key, sep, value = text.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError(f'expected NAME=VALUE, got {text!r}')
    return key, value


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main() -> int:
    global STATE
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('yaml', help='compiled pipeline YAML (PipelineSpec [--- PlatformSpec])')
    ap.add_argument('--mount', metavar='DIR',
                    help='host folder standing in for every PVC of the platform spec')
    ap.add_argument('--pvc', metavar='NAME=DIR', type=key_value, action='append',
                    default=[], help='host folder for one PVC name (beats --mount)')
    ap.add_argument('--pipeline-root', default='./local_outputs',
                    help='where kfp.local writes output parameter files')
    ap.add_argument('--image', metavar='STEP=IMAGE', type=key_value, action='append',
                    default=[], help='run STEP (e.g. train or exec-train) with IMAGE')
    ap.add_argument('--param', metavar='NAME=VALUE', type=key_value, action='append',
                    default=[], help='root pipeline parameter value')
    ap.add_argument('--env', metavar='NAME=VALUE', type=key_value, action='append',
                    default=[], help='environment variable for every step')
    ap.add_argument('--user', help='run every step as this user (default: image USER)')
    ap.add_argument('--summary', metavar='FILE',
                    help='also write the run (tasks, states, outputs, conditions) as JSON')
    args = ap.parse_args()

    with open(args.yaml) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    spec, platform = docs[0], (docs[1] if len(docs) > 1 else None)
    apply_image_overrides(spec, dict(args.image))
    arguments = typed_arguments(spec, dict(args.param))
    STATE = RunState(pvc_mounts(platform, dict(args.pvc), args.mount))

    pipeline_root = os.path.abspath(args.pipeline_root)
    os.makedirs(pipeline_root, exist_ok=True)
    os.chmod(pipeline_root, 0o755)  # a non-root step user must traverse it
    run_args = {'user': args.user} if args.user else {}
    if args.env:
        run_args['environment'] = dict(args.env)
    try:
        docker.from_env().ping()
    except Exception as e:
        print(f'no Docker API at DOCKER_HOST={os.environ.get("DOCKER_HOST")}: {e}\n'
              'with podman: podman system service --time=0 unix:///PATH/podman.sock & '
              'and DOCKER_HOST=unix:///PATH/podman.sock', file=sys.stderr)
        return 2

    install_patches()
    local.init(runner=local.DockerRunner(**run_args), pipeline_root=pipeline_root,
               raise_on_error=True)
    pipeline = components.load_component_from_text(yaml.safe_dump(spec))

    start = time.monotonic()
    error = None
    try:
        pipeline(**arguments)
    except Exception as e:  # kfp raises RuntimeError for a failed step
        error = e
    elapsed = time.monotonic() - start

    # Report: the tasks that ran, in execution order, then the IR's other container tasks.
    print(f'\n== {spec["pipelineInfo"]["name"]}: job uuid {STATE.job_uuid}, '
          f'{elapsed:.1f}s, {"FAILED" if error else "SUCCEEDED"}')
    for r in STATE.records:
        code = '' if r.exit_code is None else f' exit {r.exit_code}'
        print(f'  {r.path:40} {r.state}{code} ({r.seconds:.1f}s) '
              f'{json.dumps(r.outputs) if r.outputs else ""}')
    ran = {r.path for r in STATE.records}
    for path in container_task_paths(spec):
        if path not in ran:  # skipped by a condition, or left behind by a failure
            print(f'  {path:40} {"NOT RUN" if error else "SKIPPED"}')
    for condition, result in STATE.conditions:
        print(f'  condition {condition} -> {result}')
    if args.summary:
        write_summary(args.summary, spec, elapsed, error, ran)
    if error is None:
        return 0

    message = re.sub(r'\x1b\[[0-9;]*m', '', str(error))  # kfp colours its messages
    if not any(message in r.error for r in STATE.records):
        print(f'\nrun failed: {message}', file=sys.stderr)
    for r in STATE.records:
        if r.state == 'FAILED':
            print(f'\nstep {r.path} failed'
                  f'{"" if r.exit_code is None else f" with exit {r.exit_code}"}'
                  f'{": " + r.error if r.error else ""}', file=sys.stderr)
            if r.stderr_tail:
                print(f'--- stderr (last {STDERR_TAIL_LINES} lines) ---\n'
                      f'{r.stderr_tail}', file=sys.stderr)
    return 1


if __name__ == '__main__':
    sys.exit(main())
