"""Typed errors, each able to say in one line what went wrong and what to do.

Tasks catch `StackError` at the boundary and print `.one_line()`; the detail
(full command, stderr) is kept on the exception for `--verbose`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar


class StackError(Exception):
    """Base of every error the tool reports to a person."""

    def one_line(self) -> str:
        return str(self)


@dataclass
class ConfigError(StackError):
    """A setting breaks a rule; raised before any cloud call."""

    setting: str
    rule: str
    fix: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.rule}. Fix: {self.fix}"


class ConfigErrors(StackError):
    """Several bad settings at once, so the user fixes them in one go."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass
class MissingTool(StackError):
    tool: str
    how_to_install: str

    def __str__(self) -> str:
        return f"'{self.tool}' was not found on PATH. Fix: {self.how_to_install}"


@dataclass
class CommandError(StackError):
    """An external command failed. Subclasses say how, for callers that care."""

    command: str  # already redacted
    returncode: int
    stderr: str  # already redacted
    summary: str = ""
    hint: str = ""
    kind: ClassVar[str] = "failed"

    def __str__(self) -> str:
        text = self.summary or _last_error_line(self.stderr) or f"exit code {self.returncode}"
        program = self.command.split(" ", 1)[0]
        line = f"{program} {self.kind}: {text}"
        return f"{line} ({self.hint})" if self.hint else line

    def detail(self) -> str:
        return f"$ {self.command}\n(exit {self.returncode})\n{self.stderr.rstrip()}"


class NotFound(CommandError):
    kind = "not found"


class AlreadyExists(CommandError):
    kind = "already exists"


class PermissionDenied(CommandError):
    kind = "permission denied"


class ApiNotEnabled(CommandError):
    kind = "API not enabled"


class QuotaExceeded(CommandError):
    kind = "quota exceeded"


class PreconditionFailed(CommandError):
    """The object changed since we read it (GCS 412)."""

    kind = "precondition failed"


class ConcurrentChange(CommandError):
    """Someone else changed the resource at the same time (etag mismatch, 409 ABORTED)."""

    kind = "concurrent change"


class OperationInProgress(CommandError):
    """Cloud SQL runs one operation per instance at a time."""

    kind = "busy"


class NotAuthenticated(CommandError):
    kind = "not authenticated"


class CommandTimeout(CommandError):
    kind = "timed out"


class InvalidArgument(CommandError):
    kind = "rejected the request"


class InUse(CommandError):
    """A delete refused while something still uses the resource; it is freed in time
    (a subnet used by a cluster being deleted, a range held by Service Networking)."""

    kind = "still in use"


class Unreachable(CommandError):
    """The cluster did not answer at all (no route, refused, timed out): not a refusal."""


class NotYetPropagated(InvalidArgument):
    """A service account made moments ago is not visible to every API yet."""

    kind = "not visible yet"


class NotOfferedInZone(InvalidArgument):
    """The zone has no such accelerator type."""

    kind = "not offered in this zone"


@dataclass
class LockHeld(StackError):
    """Another run holds the stack."""

    holder: str
    since: str
    task: str

    def __str__(self) -> str:
        return (
            f"the stack is locked by {self.holder} (running '{self.task}' since {self.since}). "
            "Fix: wait for that run to finish; if it died, run again with --force-unlock"
        )


@dataclass
class StepFailed(StackError):
    """One step of a graph failed; carries the cause for the summary."""

    step: str
    cause: BaseException

    def __str__(self) -> str:
        cause = self.cause.one_line() if isinstance(self.cause, StackError) else repr(self.cause)
        return f"step '{self.step}' failed: {cause}"


_ERROR_LINE = re.compile(r"^ERROR: (?:\([\w.-]+\) )?(.*)$")
# gcloud appends where its token came from to every error; it says nothing about the error.
_AUTH_NOISE = re.compile(r"\s*This command is authenticated with .*$")


def _last_error_line(stderr: str) -> str:
    """gcloud's own one-line summary ('ERROR: (gcloud.x) ...'), else the last non-empty line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        match = _ERROR_LINE.match(line)
        if match:
            return _AUTH_NOISE.sub("", match.group(1)).strip()
    return lines[-1] if lines else ""


# (pattern, class, hint) in priority order: the first match wins.
_GCLOUD_RULES: list[tuple[re.Pattern[str], type[CommandError], str]] = [
    (
        re.compile(
            r"SERVICE_DISABLED|has not been used in project|API has not been used|is disabled"
        ),
        ApiNotEnabled,
        "run `inv infra.up`, which enables the APIs, or `gcloud services enable`",
    ),
    (
        re.compile(
            r"You do not currently have an active account|Reauthentication|"
            r"credentials? (?:have|has) expired|Please run:\s*\$ gcloud auth login|"
            r"invalid_grant|UNAUTHENTICATED|HTTPError 401|Request had invalid authentication",
            re.IGNORECASE,
        ),
        NotAuthenticated,
        "run `gcloud auth login` (and `gcloud auth application-default login`)",
    ),
    (
        re.compile(r"another operation was already in progress", re.IGNORECASE),
        OperationInProgress,
        "Cloud SQL runs one operation per instance at a time; it is retried",
    ),
    (
        # A failed write condition (GCS 412), not gRPC's FAILED_PRECONDITION (a 400).
        re.compile(
            r"HTTPError 412|Precondition ?[Ff]ailed|conditionNotMet|(?<!FAILED_)PRECONDITION"
        ),
        PreconditionFailed,
        "",
    ),
    (
        re.compile(r"ABORTED|concurrent policy changes", re.IGNORECASE),
        ConcurrentChange,
        "",
    ),
    (
        re.compile(
            r"QUOTA_EXCEEDED|RESOURCE_EXHAUSTED|[Qq]uota .*exceeded|rateLimitExceeded|"
            r"[Ii]nsufficient .*quota"
        ),
        QuotaExceeded,
        "raise the quota in the Cloud Console (IAM & Admin > Quotas) or use a smaller setting",
    ),
    (
        re.compile(
            r"ALREADY_EXISTS|already exists|alreadyExists|instanceAlreadyExists|HTTPError 409"
        ),
        AlreadyExists,
        "",
    ),
    (
        re.compile(
            r"NOT_FOUND|[Nn]ot found|was not found|notFound|HTTPError 404|\b404\b|"
            # Compute answers a missing peering with a 400 that means "not there".
            r"matched no objects|There is no peering with name"
        ),
        NotFound,
        "",
    ),
    (
        # Deletes refused while something still uses the resource: Compute says 'is already
        # being used by' (400), Service Networking 'still using'. After AlreadyExists, so a
        # create refused because a name is "already in use" stays a conflict.
        re.compile(r"\bin ?use\b|being used by|still using|resourceInUse", re.IGNORECASE),
        InUse,
        "",
    ),
    (
        re.compile(
            r"PERMISSION_DENIED|[Pp]ermission denied|does not have .*permission|HTTPError 403"
        ),
        PermissionDenied,
        "ask a project owner for the missing role (the message names it)",
    ),
    (re.compile(r'Accelerator type "?[^"\s]+"? does not exist in zone'), NotOfferedInZone, ""),
    (
        re.compile(r'Service account "?[^"\s]+"? does not exist'),
        NotYetPropagated,
        "a new service account can take a minute to be visible everywhere; it is retried",
    ),
    (
        re.compile(r"INVALID_ARGUMENT|FAILED_PRECONDITION|HTTPError 400|Invalid value|invalid"),
        InvalidArgument,
        "",
    ),
]

_KUBE_RULES: list[tuple[re.Pattern[str], type[CommandError], str]] = [
    # First: its message ("executable gke-gcloud-auth-plugin not found") is no missing object.
    (
        re.compile(r"gke-gcloud-auth-plugin", re.IGNORECASE),
        NotAuthenticated,
        "install it: `gcloud components install gke-gcloud-auth-plugin`",
    ),
    (re.compile(r"\(NotFound\)|not found", re.IGNORECASE), NotFound, ""),
    (re.compile(r"\(AlreadyExists\)|already exists", re.IGNORECASE), AlreadyExists, ""),
    (re.compile(r"\(Forbidden\)|forbidden", re.IGNORECASE), PermissionDenied, ""),
    (
        re.compile(
            r"Unable to connect to the server|connection refused|no such host|"
            r"The connection to the server \S+ was refused|cluster unreachable|i/o timeout|"
            r"TLS handshake timeout|no route to host",
            re.IGNORECASE,
        ),
        Unreachable,
        "is the cluster up and are its credentials fetched? (`inv infra.up` fetches them)",
    ),
]


def translate(program: str, command: str, returncode: int, stderr: str) -> CommandError:
    """Turn a failed command into the most specific error we can name."""
    rules = _GCLOUD_RULES if program == "gcloud" else _KUBE_RULES
    for pattern, cls, hint in rules:
        if pattern.search(stderr):
            return cls(command=command, returncode=returncode, stderr=stderr, hint=hint)
    return CommandError(command=command, returncode=returncode, stderr=stderr)
