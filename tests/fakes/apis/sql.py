"""Cloud SQL Admin v1beta4: instances, operations, databases, users."""

from __future__ import annotations

import copy
import itertools
from typing import TYPE_CHECKING, Any

from ..core import (
    PROJECT_NUMBER,
    ApiError,
    Call,
    OpError,
    Route,
    bad_request,
    iter_routes,
    not_found,
    now_rfc3339,
)
from .common import (
    SQL_NAME_RE,
    check_project,
    new_id,
    sql_network,
)

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi


SQL_IN_PROGRESS = (
    "Operation failed because another operation was already in progress. "
    "Try your request after the current operation is complete."
)
SQL_NAME_REUSE = (
    "The Cloud SQL instance already exists. When you delete an instance, you can't reuse "
    "the name of the deleted instance until one week from the deletion date."
)


class Sql:
    """Instances, databases and users; one running operation per instance."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake
        self._ips = itertools.count(3)

    def routes(self) -> list[Route]:
        p = r"/sql/v1beta4/projects/{project}"
        i = p + r"/instances/{instance}"
        return iter_routes(
            "sqladmin",
            [
                ("GET", p + "/instances", "sql.instances.list", self.list_instances),
                ("POST", p + "/instances", "sql.instances.insert", self.insert_instance),
                ("GET", i, "sql.instances.get", self.get_instance),
                ("DELETE", i, "sql.instances.delete", self.delete_instance),
                ("PATCH", i, "sql.instances.patch", self.patch_instance),
                ("GET", p + "/operations", "sql.operations.list", self.list_ops),
                ("GET", p + "/operations/{op}", "sql.operations.get", self.get_op),
                ("GET", i + "/databases", "sql.databases.list", self.list_dbs),
                ("POST", i + "/databases", "sql.databases.insert", self.insert_db),
                ("GET", i + "/databases/{db}", "sql.databases.get", self.get_db),
                ("DELETE", i + "/databases/{db}", "sql.databases.delete", self.delete_db),
                ("GET", i + "/users", "sql.users.list", self.list_users),
                ("POST", i + "/users", "sql.users.insert", self.insert_user),
                ("PUT", i + "/users", "sql.users.update", self.update_user),
                ("DELETE", i + "/users", "sql.users.delete", self.delete_user),
            ],
        )

    # -- helpers -------------------------------------------------------------------
    def _inst(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        inst: dict[str, Any] | None = self.fake.state["sql_instances"].get(c.params["instance"])
        if inst is None:
            raise not_found("The Cloud SQL instance does not exist.", reason="instanceDoesNotExist")
        return inst

    def _busy(self, instance: str) -> None:
        for op in self.fake.state["operations"].values():
            if op.api == "sqladmin" and not op.done and op.target.get("targetId") == instance:
                raise ApiError(409, SQL_IN_PROGRESS, status="ABORTED", reason="operationInProgress")

    def _op(
        self,
        c: Call,
        op_type: str,
        instance: str,
        *,
        kind: str | None = None,
        on_done: Any = None,
        on_error: Any = None,
        on_abort: Any = None,
        error: OpError | None = None,
    ) -> dict[str, Any]:
        op = self.fake.new_operation(
            kind or c.kind,
            "sqladmin",
            op_type=op_type,
            target={
                "targetId": instance,
                "targetLink": f"{c.base_url}/projects/{self.fake.project}/instances/{instance}",
                "targetProject": self.fake.project,
            },
            on_done=on_done,
            on_error=on_error,
            on_abort=on_abort,
            error=error,
        )
        return self.fake.render_operation(op, c.base_url)

    # -- instances -----------------------------------------------------------------
    def list_instances(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        items = [copy.deepcopy(i) for i in self.fake.state["sql_instances"].values()]
        return (
            {"kind": "sql#instancesList", "items": items}
            if items
            else {"kind": "sql#instancesList"}
        )

    def get_instance(self, c: Call) -> dict[str, Any]:
        return copy.deepcopy(self._inst(c))

    def insert_instance(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        body = copy.deepcopy(c.body or {})
        name = body.get("name", "")
        if not SQL_NAME_RE.fullmatch(name):
            raise bad_request(
                f"Invalid request: instance name ({name}) is invalid.", reason="invalid"
            )
        if name in self.fake.state["sql_instances"]:
            raise ApiError(
                409, "The Cloud SQL instance already exists.", reason="instanceAlreadyExists"
            )
        if name in self.fake.state["sql_reserved_names"]:
            raise ApiError(409, SQL_NAME_REUSE, reason="instanceAlreadyExists")
        settings = body.setdefault("settings", {})
        ipc = settings.setdefault("ipConfiguration", {})
        error: OpError | None = None
        network = ipc.get("privateNetwork")
        if network:
            net = network.rstrip("/").rsplit("/", 1)[-1]
            if net not in self.fake.state["networks"]:
                raise bad_request(
                    f"Invalid request: Invalid value for field privateNetwork: network "
                    f"'{network}' does not exist.",
                    reason="invalid",
                )
            conn = self.fake.state["connections"].get(net)
            rng = ipc.get("allocatedIpRange")
            if conn is None:
                error = OpError(
                    "INTERNAL",
                    "Failed to create subnetwork. Please create Service Networking connection "
                    f"with service 'servicenetworking.googleapis.com' from consumer project "
                    f"'{PROJECT_NUMBER}' network '{net}' again.",
                    sql_code="INTERNAL_ERROR",
                )
            elif rng and rng not in conn["reservedPeeringRanges"]:
                error = OpError(
                    "FAILED_PRECONDITION",
                    f"The allocated IP range name {rng} doesn't exist in the private services "
                    "connection.",
                    sql_code="INVALID_REQUEST",
                )
        region = body.get("region") or "us-central1"
        version = body.get("databaseVersion", "POSTGRES_16")
        ipc.setdefault("ipv4Enabled", True)
        settings.setdefault("tier", "db-custom-1-3840")
        settings.update({"kind": "sql#settings", "settingsVersion": "1"})
        settings.setdefault("availabilityType", "ZONAL")
        settings.setdefault("dataDiskType", "PD_SSD")
        settings.setdefault("dataDiskSizeGb", "10")
        settings.setdefault("pricingPlan", "PER_USE")
        settings.setdefault("activationPolicy", "ALWAYS")
        # The API's defaults for what hardening changes (it returns them explicitly).
        settings.setdefault("connectorEnforcement", "NOT_REQUIRED")
        settings.setdefault("deletionProtectionEnabled", False)
        ipc.setdefault("sslMode", "ALLOW_UNENCRYPTED_AND_ENCRYPTED")
        backup = settings.setdefault("backupConfiguration", {"enabled": False})
        backup.setdefault("pointInTimeRecoveryEnabled", False)
        inst = {
            **body,
            "kind": "sql#instance",
            "state": "PENDING_CREATE",
            "databaseVersion": version,
            "settings": settings,
            "etag": new_id(),
            "project": self.fake.project,
            "name": name,
            "region": region,
            "gceZone": f"{region}-b",
            "connectionName": f"{self.fake.project}:{region}:{name}",
            "backendType": "SECOND_GEN",
            "instanceType": "CLOUD_SQL_INSTANCE",
            "selfLink": f"{c.base_url}/projects/{self.fake.project}/instances/{name}",
            "serviceAccountEmailAddress": f"p{PROJECT_NUMBER}-abc123@gcp-sa-cloud-sql.iam."
            "gserviceaccount.com",
            "createTime": now_rfc3339(),
        }
        self.fake.state["sql_instances"][name] = inst

        def done() -> None:
            inst["state"] = "RUNNABLE"
            inst["databaseInstalledVersion"] = f"{version}_4"
            addrs = []
            if ipc.get("privateNetwork"):
                addrs.append({"type": "PRIVATE", "ipAddress": f"10.{next(self._ips)}.0.3"})
            if ipc.get("ipv4Enabled"):
                addrs.append({"type": "PRIMARY", "ipAddress": "127.0.0.1"})
            inst["ipAddresses"] = addrs
            is_pg = version.startswith("POSTGRES")
            default_db = "postgres" if is_pg else "mysql"
            self.fake.state["sql_databases"][name] = {
                default_db: self._db_resource(c, name, default_db)
            }
            default_user = "postgres" if is_pg else "root"
            self.fake.state["sql_users"][name] = {
                default_user: self._user_resource(name, default_user, "" if is_pg else "%")
            }

        def failed() -> None:  # what Cloud SQL leaves behind after a failed create
            inst["state"] = "FAILED"

        def aborted() -> None:  # injected failure: as if the insert never happened
            self.fake.state["sql_instances"].pop(name, None)

        return self._op(
            c, "CREATE", name, on_done=done, on_error=failed, on_abort=aborted, error=error
        )

    def delete_instance(self, c: Call) -> dict[str, Any]:
        inst = self._inst(c)
        name = inst["name"]
        self._busy(name)
        if inst.get("settings", {}).get("deletionProtectionEnabled"):
            raise bad_request(
                "The instance is protected from deletion. Disable deletion protection "
                "(settings.deletionProtectionEnabled) and try again.",
                reason="deletionProtectionEnabled",
            )
        previous = inst["state"]
        inst["state"] = "PENDING_DELETE"

        final_backup = c.q("enableFinalBackup", "false").lower() == "true"
        ttl_days = int(c.q("finalBackupTtlDays") or 30)
        if final_backup and not 1 <= ttl_days <= 365:
            raise bad_request("finalBackupTtlDays must be between 1 and 365.")

        def done() -> None:
            databases = sorted(self.fake.state["sql_databases"].get(name, {}))
            self.fake.state["sql_instances"].pop(name, None)
            self.fake.state["sql_databases"].pop(name, None)
            self.fake.state["sql_users"].pop(name, None)
            self.fake.state["sql_reserved_names"].add(name)
            if sql_network(inst):
                self.fake.state["psa_lingering"].add(sql_network(inst))
            if final_backup:
                self.fake.state["sql_final_backups"].append(
                    {
                        "instance": name,
                        "ttlDays": ttl_days,
                        "description": c.q("finalBackupDescription", ""),
                        "databases": databases,
                    }
                )

        def failed() -> None:
            inst["state"] = previous

        return self._op(c, "DELETE", name, on_done=done, on_error=failed)

    def patch_instance(self, c: Call) -> dict[str, Any]:
        inst = self._inst(c)
        self._busy(inst["name"])
        patch = c.body or {}

        for field, allowed in (
            ("connectorEnforcement", ("REQUIRED", "NOT_REQUIRED")),
        ):
            value = (patch.get("settings") or {}).get(field)
            if value is not None and value not in allowed:
                raise bad_request(f"Invalid value for {field}: {value}.", reason="invalid")

        def done() -> None:
            _merge(inst, {k: v for k, v in patch.items() if k not in ("kind", "name", "project")})

        return self._op(c, "UPDATE", inst["name"], on_done=done)

    # -- operations ----------------------------------------------------------------
    def list_ops(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        inst = c.q("instance")
        ops = [
            op
            for op in self.fake.state["operations"].values()
            if op.api == "sqladmin" and (inst is None or op.target.get("targetId") == inst)
        ]
        items = [self.fake.render_operation(op, c.base_url) for op in reversed(ops)]
        return {"kind": "sql#operationsList", "items": items}

    def get_op(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        op = self.fake.state["operations"].get(c.params["op"])
        if op is None or op.api != "sqladmin":
            raise not_found(
                "The Cloud SQL operation does not exist.", reason="operationDoesNotExist"
            )
        return self.fake.render_operation(op, c.base_url)

    # -- databases -----------------------------------------------------------------
    def _db_resource(self, c: Call, instance: str, name: str) -> dict[str, Any]:
        return {
            "kind": "sql#database",
            "charset": "UTF8",
            "collation": "en_US.UTF8",
            "etag": new_id(),
            "name": name,
            "instance": instance,
            "selfLink": f"{c.base_url}/projects/{self.fake.project}/instances/{instance}"
            f"/databases/{name}",
            "project": self.fake.project,
        }

    def _dbs(self, c: Call) -> dict[str, dict[str, Any]]:
        inst = self._inst(c)
        dbs: dict[str, dict[str, Any]] = self.fake.state["sql_databases"].setdefault(
            inst["name"], {}
        )
        return dbs

    def list_dbs(self, c: Call) -> dict[str, Any]:
        items = [copy.deepcopy(d) for d in self._dbs(c).values()]
        return {"kind": "sql#databasesList", "items": items}

    def get_db(self, c: Call) -> dict[str, Any]:
        db = self._dbs(c).get(c.params["db"])
        if db is None:
            raise not_found("The database does not exist.", reason="notFound")
        return copy.deepcopy(db)

    def insert_db(self, c: Call) -> dict[str, Any]:
        dbs = self._dbs(c)
        instance = c.params["instance"]
        name = (c.body or {}).get("name", "")
        self._busy(instance)
        if name in dbs:
            raise ApiError(
                409, f'Invalid request: database "{name}" already exists.', reason="alreadyExists"
            )
        resource = self._db_resource(c, instance, name)

        def done() -> None:
            self.fake.state["sql_databases"].setdefault(instance, {})[name] = resource

        return self._op(c, "CREATE_DATABASE", instance, on_done=done)

    def delete_db(self, c: Call) -> dict[str, Any]:
        self.get_db(c)
        instance, name = c.params["instance"], c.params["db"]
        self._busy(instance)
        return self._op(
            c,
            "DELETE_DATABASE",
            instance,
            on_done=lambda: self.fake.state["sql_databases"].get(instance, {}).pop(name, None),
        )

    # -- users ---------------------------------------------------------------------
    def _user_resource(self, instance: str, name: str, host: str = "") -> dict[str, Any]:
        user = {
            "kind": "sql#user",
            "etag": new_id(),
            "name": name,
            "instance": instance,
            "project": self.fake.project,
            "type": "BUILT_IN",
        }
        if host:
            user["host"] = host
        return user

    def _users(self, c: Call) -> dict[str, dict[str, Any]]:
        inst = self._inst(c)
        users: dict[str, dict[str, Any]] = self.fake.state["sql_users"].setdefault(inst["name"], {})
        return users

    @staticmethod
    def _public_user(u: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in u.items() if k != "password"}

    def list_users(self, c: Call) -> dict[str, Any]:
        items = [self._public_user(u) for u in self._users(c).values()]
        return {"kind": "sql#usersList", "items": items}

    def insert_user(self, c: Call) -> dict[str, Any]:
        users = self._users(c)
        instance = c.params["instance"]
        body = c.body or {}
        name = body.get("name", "")
        self._busy(instance)
        if name in users:
            raise ApiError(
                409, f'Invalid request: user "{name}" already exists.', reason="alreadyExists"
            )
        database_version = str(self._inst(c).get("databaseVersion", ""))
        if database_version.startswith("POSTGRES") and not body.get("password"):
            raise bad_request("Missing user password for PostgreSQL instance.")
        user = self._user_resource(instance, name, body.get("host", ""))
        if body.get("password") is not None:
            user["password"] = body["password"]

        def done() -> None:
            self.fake.state["sql_users"].setdefault(instance, {})[name] = user

        return self._op(c, "CREATE_USER", instance, on_done=done)

    def update_user(self, c: Call) -> dict[str, Any]:
        users = self._users(c)
        instance = c.params["instance"]
        name = c.q("name") or (c.body or {}).get("name", "")
        if name not in users:
            raise not_found("The user does not exist.", reason="notFound")
        self._busy(instance)
        body = c.body or {}

        def done() -> None:
            user = self.fake.state["sql_users"].get(instance, {}).get(name)
            if user is not None and "password" in body:
                user["password"] = body["password"]

        return self._op(c, "UPDATE_USER", instance, on_done=done)

    def delete_user(self, c: Call) -> dict[str, Any]:
        users = self._users(c)
        instance = c.params["instance"]
        name = c.q("name") or ""
        if name not in users:
            raise not_found("The user does not exist.", reason="notFound")
        self._busy(instance)
        return self._op(
            c,
            "DELETE_USER",
            instance,
            on_done=lambda: self.fake.state["sql_users"].get(instance, {}).pop(name, None),
        )


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """PATCH semantics: nested messages merge field by field; lists and scalars replace."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
