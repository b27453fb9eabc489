"""IAM: project policy (Resource Manager), service accounts and their policies.

Both policy kinds share :class:`IamPolicies`: etag-checked read-modify-write, role
allow-lists, and member validation (existing service accounts, Workload Identity pools).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from ..core import (
    PROJECT_NUMBER,
    ApiError,
    Call,
    Route,
    already_exists,
    bad_request,
    iter_routes,
    not_found,
)
from .common import (
    MEMBER_TYPES,
    SA_ID_RE,
    WI_MEMBER_RE,
    check_project,
    etag,
    new_id,
)

if TYPE_CHECKING:
    from ..gcp_api import FakeGcpApi

#: Roles accepted in a project policy (a modest allow-list of real roles).
PROJECT_ROLES = frozenset(
    "roles/" + r
    for r in [
        "owner",
        "editor",
        "viewer",
        "browser",
        "storage.objectAdmin",
        "storage.objectViewer",
        "storage.objectUser",
        "storage.objectCreator",
        "storage.admin",
        "cloudsql.client",
        "cloudsql.instanceUser",
        "cloudsql.admin",
        "cloudsql.editor",
        "cloudsql.viewer",
        "container.developer",
        "container.admin",
        "container.viewer",
        "container.clusterViewer",
        "container.defaultNodeServiceAccount",
        "container.nodeServiceAccount",
        "iam.workloadIdentityUser",
        "iam.serviceAccountUser",
        "iam.serviceAccountTokenCreator",
        "iam.serviceAccountAdmin",
        "secretmanager.secretAccessor",
        "secretmanager.admin",
        "secretmanager.viewer",
        "logging.logWriter",
        "monitoring.metricWriter",
        "monitoring.viewer",
        "stackdriver.resourceMetadata.writer",
        "autoscaling.metricsWriter",
        "artifactregistry.reader",
        "artifactregistry.writer",
        "servicenetworking.serviceAgent",
        "compute.networkUser",
        "compute.networkAdmin",
        "serviceusage.serviceUsageConsumer",
        "resourcemanager.projectIamAdmin",
    ]
)
#: Roles that can be granted *on* a service account.
SA_ROLES = frozenset(
    "roles/" + r
    for r in [
        "owner",
        "editor",
        "viewer",
        "iam.workloadIdentityUser",
        "iam.serviceAccountUser",
        "iam.serviceAccountTokenCreator",
        "iam.serviceAccountAdmin",
        "iam.serviceAccountKeyAdmin",
        "iam.serviceAccountOpenIdTokenCreator",
        "iam.serviceAccountViewer",
    ]
)


class IamPolicies:
    """Validation shared by project and service-account IAM policies."""

    def __init__(self, fake: FakeGcpApi) -> None:
        self.fake = fake

    def validate(self, policy: dict[str, Any], allowed_roles: frozenset[str]) -> None:
        bindings = policy.get("bindings") or []
        has_conditions = any(b.get("condition") for b in bindings)
        if has_conditions and int(policy.get("version") or 1) < 3:
            raise bad_request(
                "Request contains an invalid argument: policy version must be 3 when "
                "the policy contains conditional role bindings."
            )
        for b in bindings:
            role = b.get("role", "")
            if role not in allowed_roles:
                raise bad_request(f"Role {role} is not supported for this resource.")
            for member in b.get("members") or []:
                self.validate_member(member)

    def validate_member(self, member: str) -> None:
        if member in ("allUsers", "allAuthenticatedUsers"):
            return
        if not member.startswith(MEMBER_TYPES):
            raise bad_request(f"Invalid member type in '{member}'.")
        wi = WI_MEMBER_RE.fullmatch(member)
        if wi:
            pool = wi.group("pool")
            if pool not in self.fake.state["workload_pools"]:
                raise bad_request(
                    f"Identity Pool does not exist ({pool}). Please check that you specified "
                    "a valid resource name as returned in the `name` attribute in the "
                    "configuration API."
                )
            return
        if member.startswith("serviceAccount:"):
            email = member.split(":", 1)[1]
            own_domain = f"@{self.fake.project}.iam.gserviceaccount.com"
            if email.endswith(own_domain) and email not in self.fake.state["service_accounts"]:
                raise bad_request(f"Service account {email} does not exist.")

    def bump_etag(self) -> str:
        self.fake.state["iam_etag_counter"] += 1
        return etag(self.fake.state["iam_etag_counter"])

    def set(
        self, current: dict[str, Any], body: Any, allowed_roles: frozenset[str]
    ) -> dict[str, Any]:
        new = copy.deepcopy((body or {}).get("policy") or {})
        etag = new.get("etag")
        if etag and etag != current.get("etag"):
            raise ApiError(
                409,
                "There were concurrent policy changes. Please retry the whole read-modify-write "
                "with exponential backoff. The request's ETag '"
                f"{etag}' did not match the current policy's ETag '{current.get('etag')}'.",
                status="ABORTED",
            )
        self.validate(new, allowed_roles)
        mask = (body or {}).get("updateMask")
        if mask and "bindings" not in mask:
            new["bindings"] = current.get("bindings", [])
        bindings = [b for b in new.get("bindings") or [] if b.get("members")]
        current.clear()
        current["version"] = int(new.get("version") or 1)
        if any(b.get("condition") for b in bindings):
            current["version"] = 3
        if bindings:
            current["bindings"] = bindings
        if new.get("auditConfigs"):
            current["auditConfigs"] = new["auditConfigs"]
        current["etag"] = self.bump_etag()
        return copy.deepcopy(current)


class ResourceManager:
    """``projects describe|get-iam-policy|set-iam-policy`` (+ add/remove binding)."""

    def __init__(self, fake: FakeGcpApi, iam: IamPolicies) -> None:
        self.fake = fake
        self.iam = iam

    def routes(self) -> list[Route]:
        p = r"/v[13]/projects/{project}"
        return iter_routes(
            "cloudresourcemanager",
            [
                ("GET", p, "cloudresourcemanager.projects.get", self.get),
                (
                    "POST",
                    p + ":getIamPolicy",
                    "cloudresourcemanager.projects.getIamPolicy",
                    self.get_policy,
                ),
                (
                    "POST",
                    p + ":setIamPolicy",
                    "cloudresourcemanager.projects.setIamPolicy",
                    self.set_policy,
                ),
            ],
        )

    def get(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        return {
            "projectNumber": PROJECT_NUMBER,
            "projectId": self.fake.project,
            "lifecycleState": "ACTIVE",
            "name": self.fake.project,
            "createTime": "2024-01-01T00:00:00.000Z",
            "parent": {"type": "organization", "id": "1234567"},
        }

    def get_policy(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        return copy.deepcopy(self.fake.state["project_iam_policy"])

    def set_policy(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        return self.iam.set(self.fake.state["project_iam_policy"], c.body, PROJECT_ROLES)


class Iam:
    """Service accounts and the IAM policy *on* each service account."""

    def __init__(self, fake: FakeGcpApi, iam: IamPolicies) -> None:
        self.fake = fake
        self.policies = iam

    def routes(self) -> list[Route]:
        p = r"/v1/projects/{project}/serviceAccounts"
        return iter_routes(
            "iam",
            [
                ("GET", p, "iam.serviceAccounts.list", self.list_accounts),
                ("POST", p, "iam.serviceAccounts.create", self.create),
                ("GET", p + "/{email}", "iam.serviceAccounts.get", self.get),
                ("DELETE", p + "/{email}", "iam.serviceAccounts.delete", self.delete),
                (
                    "POST",
                    p + "/{email}:getIamPolicy",
                    "iam.serviceAccounts.getIamPolicy",
                    self.get_policy,
                ),
                (
                    "POST",
                    p + "/{email}:setIamPolicy",
                    "iam.serviceAccounts.setIamPolicy",
                    self.set_policy,
                ),
            ],
        )

    def _sa(self, email: str, c: Call) -> dict[str, Any]:
        sa: dict[str, Any] | None = self.fake.state["service_accounts"].get(email)
        if sa is None:
            raise not_found("Unknown service account", reason="notFound")
        return sa

    def list_accounts(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        accounts = [copy.deepcopy(sa) for sa in self.fake.state["service_accounts"].values()]
        return {"accounts": accounts} if accounts else {}

    def create(self, c: Call) -> dict[str, Any]:
        check_project(self.fake, c.params["project"])
        body = c.body or {}
        account_id = body.get("accountId", "")
        if not SA_ID_RE.fullmatch(account_id):
            raise bad_request(
                f'Invalid account ID "{account_id}": must be 6-30 characters long and match '
                "the regular expression [a-z]([-a-z0-9]*[a-z0-9])."
            )
        email = f"{account_id}@{self.fake.project}.iam.gserviceaccount.com"
        if email in self.fake.state["service_accounts"]:
            raise already_exists(
                f"Service account {account_id} already exists within project "
                f"projects/{self.fake.project}.",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                        "resourceName": f"projects/{self.fake.project}/serviceAccounts/{email}",
                    }
                ],
            )
        uid = new_id()
        sa = {
            "name": f"projects/{self.fake.project}/serviceAccounts/{email}",
            "projectId": self.fake.project,
            "uniqueId": uid,
            "email": email,
            "etag": "MDEwMjE5MjA=",
            "oauth2ClientId": uid,
        }
        extra = body.get("serviceAccount") or {}
        for key in ("displayName", "description"):
            if extra.get(key):
                sa[key] = extra[key]
        self.fake.state["service_accounts"][email] = sa
        return copy.deepcopy(sa)

    def get(self, c: Call) -> dict[str, Any]:
        return copy.deepcopy(self._sa(c.params["email"], c))

    def delete(self, c: Call) -> dict[str, Any]:
        email = c.params["email"]
        sa = self._sa(email, c)
        del self.fake.state["service_accounts"][email]
        self.fake.state["sa_iam_policies"].pop(email, None)
        # Real IAM keeps bindings but marks the member deleted.
        old, new = f"serviceAccount:{email}", f"deleted:serviceAccount:{email}?uid={sa['uniqueId']}"
        for b in self.fake.state["project_iam_policy"].get("bindings", []):
            b["members"] = [new if m == old else m for m in b["members"]]
        return {}

    def _policy(self, email: str, permission: str) -> dict[str, Any]:
        if email not in self.fake.state["service_accounts"]:
            raise ApiError(
                403,
                f"Permission '{permission}' denied on resource (or it may not exist).",
                status="PERMISSION_DENIED",
                reason="IAM_PERMISSION_DENIED",
            )
        policy: dict[str, Any] = self.fake.state["sa_iam_policies"].setdefault(
            email, {"version": 1, "etag": "ACAB"}
        )
        return policy

    def get_policy(self, c: Call) -> dict[str, Any]:
        return copy.deepcopy(self._policy(c.params["email"], "iam.serviceAccounts.getIamPolicy"))

    def set_policy(self, c: Call) -> dict[str, Any]:
        current = self._policy(c.params["email"], "iam.serviceAccounts.setIamPolicy")
        return self.policies.set(current, c.body, SA_ROLES)
