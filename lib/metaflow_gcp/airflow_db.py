"""Airflow's metadata database: a second database on the stack's own Cloud SQL instance.

There it is backed up, deletion-protected and kept by teardown's final backup like Metaflow's
own. The database, its user and the password's Secret Manager secret are made by the same
functions as Metaflow's (gcp/sql.py, gcp/secrets.py), aimed at Airflow's names; the password
travels on stdin only. Airflow reaches the instance through the Cloud SQL Auth Proxy of
charts/metaflow-airflow, the only connector the instance accepts.

A stack made by an earlier version ran Airflow on the chart's bundled Postgres. Its volume
claim is kept (never deleted) and its history is not moved automatically: `legacy_notice`
says so and gives the commands that move it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import replace

from metaflow_gcp.config import Names
from metaflow_gcp.errors import NotFound
from metaflow_gcp.gcp import secrets, sql
from metaflow_gcp.gcp.gcloud import Gcloud
from metaflow_gcp.graph import Outcome, StepRun
from metaflow_gcp.kube_names import AIRFLOW_NS

# values/airflow.yaml data.metadataSecretName and the key the chart reads (S105: names).
CONNECTION_SECRET = "airflow-db-connection"  # noqa: S105
CONNECTION_KEY = "connection"
# charts/metaflow-airflow proxy.serviceName / proxy.port.
PROXY_SERVICE = "airflow-db-proxy"
PROXY_PORT = 5432
# Which Secret Manager version and which instance the connection Secret was made for.
VERSION_ANNOTATION = "metaflow-gcp/secret-version"
INSTANCE_ANNOTATION = "metaflow-gcp/sql-instance"

# What earlier versions left: the bundled Postgres' volume claim (StatefulSet
# airflow-postgresql, volume "data") and the Secret holding its password.
LEGACY_CLAIM = "data-airflow-postgresql-0"
LEGACY_SECRET = "airflow-postgres"  # noqa: S105
LEGACY_PASSWORD_KEY = "postgres-password"  # noqa: S105
# The image that wrote that volume: the only one sure to read it (used once, by hand).
LEGACY_IMAGE = "docker.io/bitnamilegacy/postgresql:16.1.0-debian-11-r15"
MIGRATION_POD = "airflow-db-migrate"


def airflow_names(n: Names) -> Names:
    """The stack's names with Metaflow's database fields pointing at Airflow's, so the helpers
    of gcp/sql.py and gcp/secrets.py make Airflow's database, user and secret unchanged."""
    return replace(
        n, database=n.airflow_database, db_user=n.airflow_db_user, db_secret=n.airflow_db_secret
    )


def connection_url(n: Names, password: str) -> str:
    """Airflow's SQLAlchemy URL (libpq reads it too). Plain Postgres to the proxy inside the
    namespace; the proxy encrypts the way to Cloud SQL. The password is URL-safe base64."""
    return (
        f"postgresql://{n.airflow_db_user}:{password}@{PROXY_SERVICE}.{AIRFLOW_NS}:{PROXY_PORT}"
        f"/{n.airflow_database}?sslmode=disable"
    )


def secret_version(gcloud: Gcloud, n: Names) -> str:
    """Full name of the latest version of Airflow's password ('' if none yet)."""
    try:
        found = gcloud.read(
            "secrets", "versions", "describe", "latest", f"--secret={n.airflow_db_secret}", dry={}
        )
    except NotFound:
        return ""
    return str((found or {}).get("name") or "")


class AirflowDatabase:
    """Database, user and password of one run; the password is known once, then kept."""

    def __init__(self, gcloud: Gcloud, n: Names, instance: str) -> None:
        self.gcloud = gcloud
        self.names = n
        self.target = airflow_names(n)
        self.instance = instance
        self._password: str | None = None

    def remember(self, password: str) -> None:
        self._password = password

    def password(self) -> str:
        """Made by this run, or read from Secret Manager (registered for redaction)."""
        if self._password is None:
            self._password = secrets.read_password(self.gcloud, self.target)
        return self._password

    def ensure_secret(self, run: StepRun) -> Outcome:
        return secrets.ensure(self.gcloud, self.target, run, remember=self.remember)

    def ensure_database(self, run: StepRun) -> Outcome:
        return sql.ensure_database(self.gcloud, self.target, self.instance, run)

    def ensure_user(self, run: StepRun, *, password_known_set: bool) -> Outcome:
        """password_known_set: the connection Secret was made from the current password for
        this instance, which happens only after the user had it."""
        return sql.ensure_user(
            self.gcloud,
            self.target,
            self.instance,
            run,
            password_known_set=password_known_set,
            password=self.password,
        )


# ---------------------------------------------------------------------------------------
# The bundled Postgres of earlier versions


def migration_pod(n: Names) -> dict[str, object]:
    """A one-off pod on the old volume, labelled as an Airflow component so the proxy's
    NetworkPolicy lets it in; both passwords come from Secrets, never a command line."""
    security: dict[str, object] = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    as_bitnami_user: dict[str, object] = {**security, "runAsUser": 1001}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": MIGRATION_POD,
            "namespace": AIRFLOW_NS,
            "labels": {"tier": "airflow", "release": "airflow", "component": "db-migrate"},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"fsGroup": 1001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "postgres",
                    "image": LEGACY_IMAGE,
                    "env": [
                        _env_from("POSTGRES_PASSWORD", LEGACY_SECRET, LEGACY_PASSWORD_KEY),
                        _env_from("TARGET_URL", CONNECTION_SECRET, CONNECTION_KEY),
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/bitnami/postgresql"}],
                    "securityContext": as_bitnami_user,
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": LEGACY_CLAIM}}],
        },
    }


def _env_from(name: str, secret: str, key: str) -> dict[str, object]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def migration_commands(n: Names) -> list[str]:
    """Copy the old history into Cloud SQL, by hand: stop the scheduler, dump the old volume
    into Airflow's new database through the proxy, bring the schema up to date, restart."""
    kubectl = f"kubectl --context={n.kube_context} --namespace={AIRFLOW_NS}"
    manifest = shlex.quote(json.dumps(migration_pod(n), separators=(",", ":")))
    # Empty the new database first (what Airflow made there since the upgrade, newer schema
    # included), load the old one, then let Airflow migrate it to its current schema.
    copy = (
        "set -o pipefail; until pg_isready --host=127.0.0.1 --quiet; do sleep 2; done && "
        'psql "$TARGET_URL" --set=ON_ERROR_STOP=1 --command="DROP OWNED BY CURRENT_USER" && '
        'PGPASSWORD="$POSTGRES_PASSWORD" pg_dump --host=127.0.0.1 --username=postgres '
        "--format=custom --no-owner --no-acl postgres "
        '| pg_restore --dbname="$TARGET_URL" --no-owner --no-acl'
    )
    return [
        f"{kubectl} scale deployment airflow-scheduler --replicas=0",
        f"echo {manifest} | {kubectl} create -f -",
        f"{kubectl} wait --for=condition=Ready pod/{MIGRATION_POD} --timeout=5m",
        f"{kubectl} exec {MIGRATION_POD} -- bash -c {shlex.quote(copy)}",
        f"{kubectl} delete pod {MIGRATION_POD}",
        f"{kubectl} exec deploy/airflow-webserver -c webserver -- airflow db migrate",
        f"{kubectl} scale deployment airflow-scheduler --replicas=1",
    ]


def legacy_notice(n: Names) -> list[str]:
    """What services.up prints when the old claim is there (it never deletes it)."""
    return [
        f"Airflow now keeps its metadata in database {n.airflow_database} on the stack's Cloud "
        f"SQL instance. The history of the bundled Postgres it used before (volume claim "
        f"{AIRFLOW_NS}/{LEGACY_CLAIM}) was NOT moved: the claim is kept, and teardown "
        "refuses to delete it unless you pass --delete-data (or its volume is set to Retain). "
        "To move that history into Cloud SQL (it replaces what Airflow recorded since the "
        "upgrade), run:",
        *(f"    {command}" for command in migration_commands(n)),
        f"Once Airflow shows the old runs, the claim can go: `kubectl --context={n.kube_context} "
        f"--namespace={AIRFLOW_NS} delete pvc {LEGACY_CLAIM}` (and Secret {LEGACY_SECRET}).",
    ]
