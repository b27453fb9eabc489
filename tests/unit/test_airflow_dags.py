"""`inv airflow.upload-dag`: check DAG files locally, find the scheduler, copy, verify, move in place."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pytest_subprocess import FakeProcess

from metaflow_gcp.airflow_dags import (
    DRY_RUN_POD,
    SCHEDULER_SELECTOR,
    check_dag_file,
    expand_paths,
    find_scheduler_pod,
    upload_dags,
)
from metaflow_gcp.config import validate
from metaflow_gcp.errors import StackError
from metaflow_gcp.kube import Kubectl
from metaflow_gcp.shell import Runner
from tests.support.cluster import kubectl_call

CTX = validate({"org_prefix": "acme", "project": "acme-ml-prod"}).names().kube_context
K = kubectl_call(context=CTX)
POD = "airflow-scheduler-7d9f8b6c5-x2x4q"
DAGS = "/opt/airflow/dags"

# What `python flow.py airflow create hello_dag.py` writes, cut down: a config literal, the
# inlined helper module (airflow is imported inside a method, as Metaflow does), then the DAG.
METAFLOW_STYLE_DAG = textwrap.dedent(
    """\
    # Deployed on 2025-01-14 10:00:00.000000

    CONFIG = {'metadata': {'contains_foreach': False, 'flow_name': 'HelloFlow'}, 'graph_structure': ['start', 'end'], 'states': {}, 'dag_instantiation_params': {'dag_id': 'HelloFlow', 'default_args': {'owner': 'alice', 'depends_on_past': False, 'retry_delay': {'seconds': 200.0}}, 'schedule_interval': '@daily', 'tags': []}, 'file_path': None, 'metaflow_params': []}

    import json
    from datetime import datetime, timedelta


    class AirflowDAGArgs(object):
        def __init__(self, **kwargs):
            self._args = kwargs

        @property
        def arguments(self):
            return dict(**self._args)


    class Workflow(object):
        def __init__(self, **kwargs):
            self._dag_instantiation_params = AirflowDAGArgs(**kwargs)

        @classmethod
        def from_dict(cls, data_dict):
            return cls(**data_dict["dag_instantiation_params"])

        def compile(self):
            from airflow import DAG

            dag = DAG(params={}, **self._dag_instantiation_params.arguments)
            return dag


    dag = Workflow.from_dict(CONFIG).compile()
    with dag:
        pass
    """
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pod(
    name: str = POD,
    *,
    phase: str = "Running",
    ready: bool = True,
    created: str = "2025-01-14T10:00:00Z",
    deleting: bool = False,
    waiting: str | None = None,
    init_running: str | None = None,
    dags_volume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A scheduler pod as the Airflow chart 1.15 renders it (trimmed to what we read)."""
    scheduler_state: dict[str, Any] = (
        {"running": {}} if waiting is None else {"waiting": {"reason": waiting}}
    )
    doc: dict[str, Any] = {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {
            "containers": [
                {
                    "name": "scheduler",
                    "volumeMounts": [
                        {"name": "logs", "mountPath": "/opt/airflow/logs"},
                        {"name": "dags", "mountPath": DAGS},
                    ],
                },
                {"name": "scheduler-log-groomer"},
            ],
            "volumes": [
                {"name": "logs", "emptyDir": {}},
                {
                    "name": "dags",
                    **(dags_volume or {"persistentVolumeClaim": {"claimName": "airflow-dags"}}),
                },
            ],
        },
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"name": "scheduler", "ready": ready, "state": scheduler_state},
                {"name": "scheduler-log-groomer", "ready": True, "state": {"running": {}}},
            ],
        },
    }
    if init_running:
        doc["status"]["initContainerStatuses"] = [
            {"name": init_running, "ready": False, "state": {"running": {}}}
        ]
    if deleting:
        doc["metadata"]["deletionTimestamp"] = "2025-01-14T11:00:00Z"
    return doc


def in_airflow(*words: str) -> list[str]:
    """A kubectl argv in the airflow namespace, on the stack's context."""
    return kubectl_call(*words, context=CTX, namespace="airflow")


def in_scheduler(*command: str) -> list[str]:
    """`kubectl exec` of `command` in the scheduler container of the scheduler pod."""
    return in_airflow("exec", POD, "-c", "scheduler", "--", *command)


def copy_to_scheduler(path: Path, remote: str) -> list[str]:
    """`kubectl cp` of a local file to `remote` in the scheduler container."""
    return kubectl_call("cp", str(path), f"airflow/{POD}:{remote}", "-c", "scheduler", context=CTX)


def register_pods(fp: FakeProcess, *pods: dict[str, Any]) -> None:
    fp.register(
        in_airflow("get", "pods", "-l", SCHEDULER_SELECTOR, "-o", "json"),
        stdout=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(pods)}),
    )


def register_upload(
    fp: FakeProcess, path: Path, *, name: str | None = None, remote_sum: str | None = None
) -> None:
    name = name or path.name
    staging = f"{DAGS}/.{name}.uploading"
    fp.register(copy_to_scheduler(path, staging))
    fp.register(
        in_scheduler("sha256sum", staging), stdout=f"{remote_sum or sha(path)}  {staging}\n"
    )
    fp.register(in_scheduler("mv", "-f", staging, f"{DAGS}/{name}"))


@pytest.fixture
def kubectl() -> Kubectl:
    return Kubectl(Runner(), CTX)


@pytest.fixture
def dag_file(tmp_path: Path) -> Path:
    return write(tmp_path, "hello_dag.py", METAFLOW_STYLE_DAG)


# -- local checks ----------------------------------------------------------------------


class TestCheckDagFile:
    def test_a_metaflow_style_dag_file_is_accepted(self, dag_file: Path) -> None:
        check_dag_file(dag_file)

    def test_the_file_metaflows_own_generator_writes_is_accepted(self, tmp_path: Path) -> None:
        airflow = pytest.importorskip("metaflow.plugins.airflow.airflow")
        text = airflow.Airflow._to_airflow_dag_file(
            None,
            {
                "metadata": {"contains_foreach": False, "flow_name": "HelloFlow"},
                "graph_structure": ["start", "end"],
                "states": {},
                "dag_instantiation_params": {"dag_id": "HelloFlow"},
                "file_path": None,
                "metaflow_params": [],
            },
        )
        check_dag_file(write(tmp_path, "generated.py", text))

    @pytest.mark.parametrize(
        "source",
        [
            "from airflow import DAG\nwith DAG('a') as d:\n    pass\n",
            "import airflow\nd = airflow.DAG('a')\n",
            "from airflow.models import DAG as D\nd = D(dag_id='a')\n",
            "from airflow import models\nd = models.DAG('a')\n",
            "import airflow.models.dag as m\nd = m.DAG('a')\n",
            "from airflow.decorators import dag\n@dag(schedule=None)\ndef a():\n    pass\na()\n",
            "from airflow.decorators import dag\n@dag\ndef a():\n    pass\na()\n",
        ],
        ids=[
            "with DAG(...)",
            "airflow.DAG(...)",
            "DAG imported under another name",
            "models.DAG(...)",
            "a module alias",
            "@dag(...)",
            "bare @dag",
        ],
    )
    def test_every_way_of_defining_a_dag_is_recognised(self, tmp_path: Path, source: str) -> None:
        check_dag_file(write(tmp_path, "d.py", source))

    def test_a_missing_file_is_named(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope.py"
        with pytest.raises(StackError, match=rf"^{re.escape(str(missing))}: no such file$"):
            check_dag_file(missing)

    def test_a_file_that_is_not_python_is_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, "hello_dag.yaml", "dag: 1\n")
        with pytest.raises(StackError, match=rf"^{re.escape(str(path))}: is not a \.py file"):
            check_dag_file(path)

    def test_a_syntax_error_names_the_file_and_line(self, tmp_path: Path) -> None:
        path = write(tmp_path, "broken.py", "from airflow import DAG\n\ndag = DAG(\n")
        with pytest.raises(StackError) as caught:
            check_dag_file(path)
        message = caught.value.one_line()
        assert message.startswith(f"{path}: line 3: ")
        assert message.endswith("(not valid Python)")
        assert "\n" not in message

    def test_what_only_the_compiler_rejects_is_caught_too(self, tmp_path: Path) -> None:
        path = write(tmp_path, "odd.py", "from airflow import DAG\nreturn DAG('a')\n")
        with pytest.raises(StackError, match="'return' outside function"):
            check_dag_file(path)

    def test_python_that_never_imports_airflow_is_refused(self, tmp_path: Path) -> None:
        path = write(
            tmp_path, "flow.py", "from metaflow import FlowSpec\nclass F(FlowSpec):\n    pass\n"
        )
        with pytest.raises(
            StackError, match=rf"^{re.escape(str(path))}: is not an Airflow DAG file: it never"
        ):
            check_dag_file(path)

    def test_airflow_code_without_a_dag_is_refused(self, tmp_path: Path) -> None:
        path = write(
            tmp_path, "helpers.py", "from airflow.models import Variable\nX = Variable.get('x')\n"
        )
        with pytest.raises(
            StackError, match=rf"^{re.escape(str(path))}: imports airflow but defines no DAG"
        ):
            check_dag_file(path)

    def test_a_dag_class_from_elsewhere_does_not_count(self, tmp_path: Path) -> None:
        path = write(tmp_path, "fake.py", "import airflow\nfrom mylib import DAG\nd = DAG('a')\n")
        with pytest.raises(StackError, match="defines no DAG"):
            check_dag_file(path)

    def test_an_airflow_3_sdk_dag_is_refused_with_the_reason(self, tmp_path: Path) -> None:
        path = write(tmp_path, "af3.py", "from airflow.sdk import DAG\nd = DAG('a')\n")
        with pytest.raises(StackError, match=r"Airflow 3 SDK.*Airflow 2\.11"):
            check_dag_file(path)

    def test_the_file_is_never_run(self, tmp_path: Path) -> None:
        marker = tmp_path / "ran"
        path = write(
            tmp_path,
            "side_effect.py",
            f"open({str(marker)!r}, 'w').close()\nfrom airflow import DAG\nDAG('a')\n",
        )
        check_dag_file(path)
        assert not marker.exists()


class TestExpandPaths:
    def test_files_keep_their_order_and_duplicates_go(self, tmp_path: Path) -> None:
        a = write(tmp_path, "a.py", "")
        b = write(tmp_path, "b.py", "")
        assert expand_paths([str(b), str(a), str(b)]) == [b, a]

    def test_a_folder_becomes_its_python_files_sorted_without_hidden_ones(
        self, tmp_path: Path
    ) -> None:
        write(tmp_path, "dags/z.py", "")
        write(tmp_path, "dags/a.py", "")
        write(tmp_path, "dags/.hidden.py", "")
        write(tmp_path, "dags/notes.txt", "")
        write(tmp_path, "dags/sub/deep.py", "")
        assert [p.name for p in expand_paths([str(tmp_path / "dags")])] == ["a.py", "z.py"]

    def test_an_empty_folder_is_an_error(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        with pytest.raises(StackError, match=r"folder has no \*\.py files"):
            expand_paths([str(tmp_path / "empty")])

    def test_nothing_given_is_an_error(self) -> None:
        with pytest.raises(StackError, match="no DAG file given"):
            expand_paths([])


# -- finding the scheduler -------------------------------------------------------------


class TestFindSchedulerPod:
    def test_the_ready_scheduler_is_found(self, fp: FakeProcess, kubectl: Kubectl) -> None:
        register_pods(fp, pod())
        assert find_scheduler_pod(kubectl) == POD

    def test_a_missing_namespace_says_airflow_is_not_deployed(
        self, fp: FakeProcess, kubectl: Kubectl
    ) -> None:
        register_pods(fp)
        fp.register(
            kubectl_call("get", "namespace", "airflow", "-o", "json", context=CTX),
            returncode=1,
            stderr='Error from server (NotFound): namespaces "airflow" not found\n',
        )
        with pytest.raises(StackError) as caught:
            find_scheduler_pod(kubectl)
        message = caught.value.one_line()
        assert "Airflow is not deployed: namespace 'airflow' does not exist" in message
        assert "run `inv services.up --airflow`" in message

    def test_no_scheduler_pod_says_airflow_is_not_deployed(
        self, fp: FakeProcess, kubectl: Kubectl
    ) -> None:
        register_pods(fp)
        fp.register(
            kubectl_call("get", "namespace", "airflow", "-o", "json", context=CTX),
            stdout='{"metadata": {"name": "airflow"}}',
        )
        with pytest.raises(
            StackError, match=r"no scheduler pod .* in namespace 'airflow'.*services\.up --airflow"
        ):
            find_scheduler_pod(kubectl)

    def test_pods_that_are_not_ready_are_described(self, fp: FakeProcess, kubectl: Kubectl) -> None:
        register_pods(
            fp,
            pod(
                "airflow-scheduler-a",
                phase="Pending",
                ready=False,
                waiting="PodInitializing",
                init_running="wait-for-airflow-migrations",
                created="2025-01-14T10:00:00Z",
            ),
            pod(
                "airflow-scheduler-b",
                ready=False,
                waiting="CrashLoopBackOff",
                created="2025-01-14T09:00:00Z",
            ),
            pod("airflow-scheduler-c", deleting=True, created="2025-01-14T08:00:00Z"),
        )
        with pytest.raises(StackError) as caught:
            find_scheduler_pod(kubectl)
        message = caught.value.one_line()
        assert "no Airflow scheduler pod is ready in namespace 'airflow'" in message
        assert (
            "airflow-scheduler-a is Pending (init container wait-for-airflow-migrations running "
            "but not ready, container scheduler PodInitializing)" in message
        )
        assert "airflow-scheduler-b is Running (container scheduler CrashLoopBackOff)" in message
        assert "airflow-scheduler-c is Terminating" in message
        assert "\n" not in message

    def test_running_but_failing_its_readiness_probe_is_not_ready(
        self, fp: FakeProcess, kubectl: Kubectl
    ) -> None:
        register_pods(fp, pod(ready=False))
        with pytest.raises(StackError, match="scheduler running but not ready"):
            find_scheduler_pod(kubectl)

    def test_several_ready_pods_give_the_newest_then_the_first_by_name(
        self, fp: FakeProcess, kubectl: Kubectl
    ) -> None:
        pods = [
            pod("airflow-scheduler-old", created="2025-01-14T08:00:00Z"),
            pod("airflow-scheduler-zz", created="2025-01-14T10:00:00Z"),
            pod("airflow-scheduler-aa", created="2025-01-14T10:00:00Z"),
            pod("airflow-scheduler-newest-broken", ready=False, created="2025-01-14T11:00:00Z"),
        ]
        register_pods(fp, *pods)
        register_pods(fp, *reversed(pods))
        assert find_scheduler_pod(kubectl) == "airflow-scheduler-aa"
        assert find_scheduler_pod(kubectl) == "airflow-scheduler-aa"

    def test_a_pod_without_the_scheduler_container_is_refused(
        self, fp: FakeProcess, kubectl: Kubectl
    ) -> None:
        register_pods(fp, pod())
        with pytest.raises(
            StackError, match=r"has no container 'main' .*scheduler, scheduler-log-groomer"
        ):
            find_scheduler_pod(kubectl, container="main")


# -- uploading -------------------------------------------------------------------------


class TestUploadDags:
    def test_a_file_is_copied_verified_and_moved_into_place(
        self, fp: FakeProcess, kubectl: Kubectl, dag_file: Path
    ) -> None:
        register_pods(fp, pod())
        register_upload(fp, dag_file)
        [done] = upload_dags(kubectl, [dag_file])
        assert done.remote == f"{DAGS}/hello_dag.py"
        assert done.pod == POD
        assert done.sha256 == sha(dag_file)
        assert done.verified
        # Copy to a name Airflow ignores, check it, and only then move it into place.
        calls = [list(call) for call in fp.calls]
        staging = f"{DAGS}/.hello_dag.py.uploading"
        assert calls[1][2:] == ["cp", str(dag_file), f"airflow/{POD}:{staging}", "-c", "scheduler"]
        assert calls[2][-2:] == ["sha256sum", staging]
        assert calls[3][-4:] == ["mv", "-f", staging, f"{DAGS}/hello_dag.py"]

    def test_every_kubectl_call_names_the_stack_context(
        self, fp: FakeProcess, kubectl: Kubectl, dag_file: Path
    ) -> None:
        register_pods(fp, pod())
        register_upload(fp, dag_file)
        upload_dags(kubectl, [dag_file])
        assert len(fp.calls) == 4
        assert all(list(call)[:2] == K for call in fp.calls)

    def test_a_checksum_mismatch_is_an_error_and_nothing_is_replaced(
        self, fp: FakeProcess, kubectl: Kubectl, dag_file: Path
    ) -> None:
        register_pods(fp, pod())
        staging = f"{DAGS}/.hello_dag.py.uploading"
        fp.register(copy_to_scheduler(dag_file, staging))
        fp.register(in_scheduler("sha256sum", staging), stdout=f"{'0' * 64}  {staging}\n")
        remove = fp.register(in_scheduler("rm", "-f", staging))
        with pytest.raises(StackError) as caught:
            upload_dags(kubectl, [dag_file])
        message = caught.value.one_line()
        assert message.startswith(f"{dag_file}: the copy in {POD} does not match the local file")
        assert f"sha256 000000000000 in the pod, {sha(dag_file)[:12]} here" in message
        assert "nothing was replaced" in message
        assert remove.calls  # the bad copy is cleaned up
        assert not any("mv" in call for call in fp.calls)

    def test_a_failed_copy_is_one_line_naming_the_file(
        self, fp: FakeProcess, kubectl: Kubectl, dag_file: Path
    ) -> None:
        register_pods(fp, pod())
        fp.register(
            copy_to_scheduler(dag_file, f"{DAGS}/.hello_dag.py.uploading"),
            returncode=1,
            stderr='error: unable to upgrade connection: container not found ("scheduler")\n',
        )
        with pytest.raises(StackError) as caught:
            upload_dags(kubectl, [dag_file])
        message = caught.value.one_line()
        assert message.startswith(f"{dag_file}: copy to {POD}:{DAGS}/hello_dag.py failed: kubectl")
        assert "container not found" in message
        assert "\n" not in message
        assert len(fp.calls) == 2  # no exec after a failed copy

    def test_all_files_are_checked_before_the_cluster_is_touched(
        self, fp: FakeProcess, kubectl: Kubectl, tmp_path: Path, dag_file: Path
    ) -> None:
        broken = write(tmp_path, "broken.py", "def (\n")
        notes = write(tmp_path, "notes.txt", "hi")
        with pytest.raises(StackError) as caught:
            upload_dags(kubectl, [dag_file, broken, notes])
        lines = str(caught.value).splitlines()
        assert [line.split(":")[0] for line in lines] == [str(broken), str(notes)]
        assert len(fp.calls) == 0

    def test_several_files_and_a_folder(
        self, fp: FakeProcess, kubectl: Kubectl, tmp_path: Path
    ) -> None:
        one = write(tmp_path, "one_dag.py", METAFLOW_STYLE_DAG)
        write(tmp_path, "more/two_dag.py", METAFLOW_STYLE_DAG.replace("HelloFlow", "TwoFlow"))
        write(tmp_path, "more/three_dag.py", METAFLOW_STYLE_DAG.replace("HelloFlow", "ThreeFlow"))
        paths = expand_paths([str(one), str(tmp_path / "more")])
        register_pods(fp, pod())
        for path in paths:
            register_upload(fp, path)
        done = upload_dags(kubectl, paths)
        assert [u.remote for u in done] == [
            f"{DAGS}/one_dag.py",
            f"{DAGS}/three_dag.py",
            f"{DAGS}/two_dag.py",
        ]
        pod_lookups = [c for c in fp.calls if "pods" in c]
        assert len(pod_lookups) == 1  # one pod for the whole batch

    def test_a_later_failure_says_which_files_already_arrived(
        self, fp: FakeProcess, kubectl: Kubectl, tmp_path: Path
    ) -> None:
        one = write(tmp_path, "one.py", METAFLOW_STYLE_DAG)
        two = write(tmp_path, "two.py", METAFLOW_STYLE_DAG + "\n# two\n")
        register_pods(fp, pod())
        register_upload(fp, one)
        fp.register(
            copy_to_scheduler(two, f"{DAGS}/.two.py.uploading"),
            returncode=1,
            stderr="error: connection reset by peer\n",
        )
        with pytest.raises(
            StackError, match=r"^.*two\.py: copy to .* \(already uploaded: one\.py\)$"
        ):
            upload_dags(kubectl, [one, two])

    def test_dest_name_renames_the_file_in_the_dags_folder(
        self, fp: FakeProcess, kubectl: Kubectl, dag_file: Path
    ) -> None:
        register_pods(fp, pod())
        register_upload(fp, dag_file, name="hello_v2.py")
        [done] = upload_dags(kubectl, [dag_file], dest_name="hello_v2.py")
        assert done.remote == f"{DAGS}/hello_v2.py"

    def test_dest_name_needs_exactly_one_file(
        self, fp: FakeProcess, kubectl: Kubectl, tmp_path: Path, dag_file: Path
    ) -> None:
        other = write(tmp_path, "other.py", METAFLOW_STYLE_DAG)
        with pytest.raises(StackError, match="--dest-name names one file, but 2 files were given"):
            upload_dags(kubectl, [dag_file, other], dest_name="x.py")
        assert len(fp.calls) == 0

    @pytest.mark.parametrize("bad", ["../x.py", "sub/x.py", ".hidden.py", "x.txt", "x"])
    def test_dest_name_must_be_a_plain_python_file_name(
        self, fp: FakeProcess, kubectl: Kubectl, dag_file: Path, bad: str
    ) -> None:
        with pytest.raises(StackError, match=r"must be a plain file name ending in \.py"):
            upload_dags(kubectl, [dag_file], dest_name=bad)
        assert len(fp.calls) == 0

    def test_two_files_with_the_same_name_would_collide(
        self, fp: FakeProcess, kubectl: Kubectl, tmp_path: Path
    ) -> None:
        a = write(tmp_path, "a/dag.py", METAFLOW_STYLE_DAG)
        b = write(tmp_path, "b/dag.py", METAFLOW_STYLE_DAG)
        with pytest.raises(StackError, match=r"would both become /opt/airflow/dags/dag\.py"):
            upload_dags(kubectl, [a, b])
        assert len(fp.calls) == 0

    def test_a_dags_folder_that_is_not_a_persistent_volume_is_refused(
        self, fp: FakeProcess, kubectl: Kubectl, dag_file: Path
    ) -> None:
        register_pods(fp, pod(dags_volume={"emptyDir": {}}))
        with pytest.raises(
            StackError, match="on a volume of type emptyDir, not a persistent volume claim"
        ):
            upload_dags(kubectl, [dag_file])
        assert len(fp.calls) == 1

    def test_dry_run_shows_every_command_and_runs_nothing(
        self, fp: FakeProcess, dag_file: Path
    ) -> None:
        shown: list[str] = []
        kubectl = Kubectl(
            Runner(dry_run=True, echo=shown.append, env={"PATH": "/nonexistent"}), CTX
        )
        [done] = upload_dags(kubectl, [dag_file])
        assert len(fp.calls) == 0
        assert not done.verified
        assert done.pod == DRY_RUN_POD
        assert [line.split()[2:4] for line in shown] == [
            ["--namespace=airflow", "get"],
            ["cp", str(dag_file)],
            ["--namespace=airflow", "exec"],
            ["--namespace=airflow", "exec"],
        ]
        assert all(line.startswith(f"kubectl --context={CTX} ") for line in shown)
        assert f"'airflow/{DRY_RUN_POD}:{DAGS}/.hello_dag.py.uploading'" in shown[1]
        assert shown[3].endswith(f"mv -f {DAGS}/.hello_dag.py.uploading {DAGS}/hello_dag.py")

    def test_dry_run_still_checks_the_files(self, fp: FakeProcess, tmp_path: Path) -> None:
        kubectl = Kubectl(Runner(dry_run=True), CTX)
        with pytest.raises(StackError, match="no such file"):
            upload_dags(kubectl, [tmp_path / "missing.py"])
