"""Read `relay.yaml` into a `Topology`, collecting every mistake (each with its path)."""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from relay.protocol import (
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MEMORY,
    DEFAULT_RUNTIME,
    MAX_CONCURRENCY,
    MAX_EVENT_TIMEOUT_SECONDS,
    MAX_HTTP_TIMEOUT_SECONDS,
    MAX_INSTANCES,
    MEMORY_RULE,
    PROJECT_RULE,
    PYTHON_RUNTIMES,
    REGION_RULE,
    RELAY_RUNTIMES,
    RESOURCE_RULE,
    ProtocolError,
    check_project_id,
    check_resource_id,
    environment_problem,
    is_region,
    memory_in_bounds,
    parse_memory,
)
from relay.topology._model import (
    TIMEOUT_MARGIN_SECONDS,
    Delivery,
    Function,
    Identity,
    RetryPolicy,
    Subscription,
    Topology,
)

DEFAULT_FILE = "relay.yaml"
DEFAULT_REGION = "europe-west1"
DEFAULT_URL = "https://{region}-{project}.cloudfunctions.net/{name}"

_FUNCTION = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IDENTITY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_EMAIL = re.compile(r"[^@\s:]+@[^@\s:]+\.[^@\s:]+")
_MEMBER_KINDS = ("user", "group", "domain", "principal", "principalSet")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m)?")
_IDENTITY_KEYS = (
    "service_account",
    "member",
    "publishes",
    "subscribes",
    "invokes",
    "waits_on",
    "wait_project",
)


@dataclass(frozen=True)
class TopologyIssue:
    """One mistake in the file: where (dotted path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class TopologyError(ValueError):
    """The topology file is invalid; `.issues` lists every mistake found, in file order."""

    def __init__(
        self, issues: list[TopologyIssue] | tuple[TopologyIssue, ...], source: str = ""
    ) -> None:
        self.issues = tuple(issues)
        self.source = source
        where = f"{source}: " if source else ""
        noun = "mistake" if len(self.issues) == 1 else "mistakes"
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{where}{len(self.issues)} {noun} in the topology:\n{lines}")


def load_topology(
    path: str | Path = DEFAULT_FILE, *, project: str | None = None, check_sources: bool = True
) -> Topology:
    """Read and validate a topology file; `project` overrides the file's project id."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(
            [TopologyIssue("", f"cannot read {file}: {exc.strerror}")], str(file)
        ) from exc
    return parse_topology(
        text,
        base_dir=file.resolve().parent,
        project=project,
        check_sources=check_sources,
        source=str(file),
    )


def parse_topology(
    text: str,
    *,
    base_dir: str | Path = ".",
    project: str | None = None,
    check_sources: bool = True,
    source: str = "",
) -> Topology:
    """Validate YAML text into a `Topology`; `TopologyError` lists every mistake at once."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TopologyError(
            [TopologyIssue("", f"not valid YAML: {where}{problem}")], source
        ) from exc
    parser = _Parser(Path(base_dir).resolve(), project, check_sources)
    topology = parser.parse(document)
    if parser.issues or topology is None:
        raise TopologyError(parser.issues, source)
    return replace(topology, path=Path(source).resolve() if source else None)


def parse_duration(value: object) -> float | None:
    """Seconds from `10`, `10s`, `1.5s`, `500ms` or `2m`; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        return None
    number = float(match.group(1))
    return {"ms": number / 1000, "m": number * 60}.get(match.group(2) or "s", number)


class _Parser:
    """Walks the document once, recording an issue per mistake instead of stopping at the first."""

    def __init__(self, base_dir: Path, project: str | None, check_sources: bool) -> None:
        self.base_dir = base_dir
        self.project_override = project
        self.check_sources = check_sources
        self.issues: list[TopologyIssue] = []
        self.project = ""
        self.region = ""

    # -- helpers ---------------------------------------------------------------------------------

    def issue(self, path: str, message: str) -> None:
        self.issues.append(TopologyIssue(path, message))

    def mapping(
        self, value: object, path: str, known: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.issue(path, f"must be a mapping, got {_kind(value)}")
            return {}
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.issue(path, f"keys must be strings, got {key!r}")
                continue
            if known is not None and key not in known:
                self.issue(_join(path, key), f"unknown key (expected one of: {', '.join(known)})")
                continue
            result[key] = item
        return result

    def string(self, value: object, path: str, *, required: bool = True) -> str | None:
        if value is None:
            if required:
                self.issue(path, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.issue(path, f"must be a non-empty string, got {value!r}")
            return None
        return self.substitute(value.strip(), path)

    def substitute(self, value: str, path: str) -> str:
        try:
            return value.format_map({"project": self.project, "region": self.region})
        except (KeyError, ValueError, IndexError) as exc:
            self.issue(path, f"unknown placeholder {exc} (only {{project}} and {{region}})")
            return value

    def names(self, value: object, path: str, check: Callable[[str, str], bool]) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.issue(path, f"must be a list of names, got {_kind(value)}")
            return ()
        names: list[str] = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            name = self.string(item, item_path)
            if name is None or not check(name, item_path):
                continue
            if name in names:
                self.issue(item_path, f"{name} is listed twice")
                continue
            names.append(name)
        return tuple(names)

    def resource_name(self, name: str, path: str) -> bool:
        try:
            check_resource_id(name, "name")
        except ProtocolError:
            self.issue(path, f"{name!r} is not a valid Pub/Sub name ({RESOURCE_RULE})")
            return False
        return True

    def integer(self, value: object, path: str, default: int, low: int, high: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.issue(path, f"must be an integer {low}..{high}, got {value!r}")
            return default
        if not low <= value <= high:
            self.issue(path, f"must be {low}..{high}, got {value}")
            return default
        return value

    def seconds(self, value: object, path: str, default: float, low: float, high: float) -> float:
        if value is None:
            return default
        seconds = parse_duration(value)
        if seconds is None:
            self.issue(path, f"must be a duration like 10s, 500ms or 2m, got {value!r}")
            return default
        if not low <= seconds <= high:
            self.issue(path, f"must be {_fmt(low)}..{_fmt(high)}, got {_fmt(seconds)}")
            return default
        return seconds

    def retry(self, value: object, path: str) -> RetryPolicy:
        raw = self.mapping(value, path, ("minimum_backoff", "maximum_backoff"))
        minimum = self.seconds(
            raw.get("minimum_backoff"), _join(path, "minimum_backoff"), 10.0, 0, 600
        )
        maximum = self.seconds(
            raw.get("maximum_backoff"), _join(path, "maximum_backoff"), 600.0, 0, 600
        )
        if minimum > maximum:
            self.issue(
                _join(path, "maximum_backoff"),
                f"must not be below minimum_backoff ({_fmt(maximum)} < {_fmt(minimum)})",
            )
        return RetryPolicy(minimum, maximum)

    # -- sections ----------------------------------------------------------------------------------

    def parse(self, document: object) -> Topology | None:
        if document is None:
            self.issue("", "the file is empty")
            return None
        if not isinstance(document, dict):
            kind = _kind(document)
            self.issue("", f"the file must be a mapping (project, topics, ...), got {kind}")
            return None
        root = self.mapping(
            document, "", ("version", "project", "region", "topics", "identities", "functions")
        )
        version = root.get("version", 1)
        if version != 1:
            self.issue("version", f"must be 1, got {version!r}")
        self.project = self.project_override or self.string(root.get("project"), "project") or ""
        if self.project:
            try:
                check_project_id(self.project)
            except ProtocolError:
                where = "--project" if self.project_override else "project"
                self.issue(where, f"{self.project!r} is not a valid project id ({PROJECT_RULE})")
        self.region = self.string(root.get("region"), "region", required=False) or DEFAULT_REGION
        if not is_region(self.region):
            self.issue("region", f"{self.region!r} is not {REGION_RULE}")

        requests, completion, dead_letters, completion_subs = self.topics(root.get("topics"))
        identities = self.identities(root.get("identities"))
        functions = self.functions(root.get("functions"), requests, dead_letters)
        self.cross_check(requests, completion, dead_letters, completion_subs, functions, identities)
        return Topology(
            project=self.project,
            region=self.region,
            request_topics=requests,
            completion_topic=completion or "",
            dead_letter_topics=dead_letters,
            completion_subscriptions=completion_subs,
            functions=MappingProxyType(functions),
            identities=MappingProxyType(identities),
        )

    def topics(
        self, value: object
    ) -> tuple[tuple[str, ...], str | None, tuple[str, ...], tuple[Subscription, ...]]:
        if value is None:
            self.issue("topics", "is required (requests, completion, dead_letter)")
            return (), None, (), ()
        raw = self.mapping(value, "topics", ("requests", "completion", "dead_letter"))
        requests = self.names(raw.get("requests"), "topics.requests", self.resource_name)
        if raw.get("requests") is None:
            self.issue("topics.requests", "is required (at least one topic)")
        elif raw["requests"] == []:
            self.issue("topics.requests", "must name at least one topic")
        completion, subscriptions = self.completion(raw.get("completion"))
        dead_letters = self.names(raw.get("dead_letter"), "topics.dead_letter", self.resource_name)
        seen: dict[str, str] = {}
        for group, names in (("requests", requests), ("dead_letter", dead_letters)):
            for index, name in enumerate(names):
                path = f"topics.{group}[{index}]"
                if name in seen:
                    self.issue(path, f"{name} is already declared at {seen[name]}")
                elif name == completion:
                    self.issue(path, f"{name} is the completion topic")
                seen.setdefault(name, path)
        return requests, completion, dead_letters, subscriptions

    def completion(self, value: object) -> tuple[str | None, tuple[Subscription, ...]]:
        path = "topics.completion"
        if value is None:
            self.issue(path, "is required")
            return None, ()
        if isinstance(value, str):
            name = self.string(value, path)
            return (name if name and self.resource_name(name, path) else None), ()
        raw = self.mapping(value, path, ("name", "subscriptions"))
        name = self.string(raw.get("name"), _join(path, "name"))
        if name is not None and not self.resource_name(name, _join(path, "name")):
            name = None
        subscriptions: list[Subscription] = []
        subs_path = _join(path, "subscriptions")
        for sub_name, sub_value in self.mapping(raw.get("subscriptions"), subs_path).items():
            sub_path = _join(subs_path, sub_name)
            if not self.resource_name(sub_name, sub_path):
                continue
            sub_raw = self.mapping(sub_value, sub_path, ("ack_deadline", "retry"))
            subscriptions.append(
                Subscription(
                    name=sub_name,
                    topic=name or "",
                    ack_deadline_seconds=int(
                        self.seconds(
                            sub_raw.get("ack_deadline"),
                            _join(sub_path, "ack_deadline"),
                            60,
                            10,
                            600,
                        )
                    ),
                    retry=self.retry(sub_raw.get("retry"), _join(sub_path, "retry")),
                )
            )
        return name, tuple(subscriptions)

    def identities(self, value: object) -> dict[str, Identity]:
        identities: dict[str, Identity] = {}
        for name, item in self.mapping(value, "identities").items():
            path = _join("identities", name)
            if not _IDENTITY.fullmatch(name):
                self.issue(
                    path, "identity names are letters, digits, - and _ (starting with a letter)"
                )
                continue
            raw = self.mapping(item, path, _IDENTITY_KEYS)
            member = self.member(raw, path)
            waits_on = self.names(raw.get("waits_on"), _join(path, "waits_on"), _any)
            identities[name] = Identity(
                name=name,
                member=member or "",
                publishes=self.names(raw.get("publishes"), _join(path, "publishes"), _any),
                subscribes=self.names(raw.get("subscribes"), _join(path, "subscribes"), _any),
                invokes=self.names(raw.get("invokes"), _join(path, "invokes"), _any),
                waits_on=waits_on,
                wait_project=self.wait_project(
                    raw.get("wait_project"), _join(path, "wait_project"), waits_on
                ),
            )
        return identities

    def wait_project(self, value: object, path: str, waits_on: tuple[str, ...]) -> str | None:
        """The project of an identity's task subscriptions: a valid project id, not the
        topology's own (that is the default, and no separation), for an identity that waits."""
        project = self.string(value, path, required=False)
        if project is None:
            return None
        try:
            check_project_id(project)
        except ProtocolError:
            self.issue(path, f"{project!r} is not a valid project id ({PROJECT_RULE})")
            return None
        if not waits_on:
            self.issue(path, "only applies with waits_on (where its task subscriptions attach)")
            return None
        if project == self.project:
            self.issue(
                path,
                f"{project} is the topology's project: leave wait_project out (that is the "
                "default) or name a project of their own, where the waiter role is granted",
            )
            return None
        return project

    def member(self, raw: dict[str, Any], path: str) -> str | None:
        if ("service_account" in raw) == ("member" in raw):
            self.issue(path, "needs exactly one of service_account or member")
            return None
        if "service_account" in raw:
            email = self.string(raw["service_account"], _join(path, "service_account"))
            if email is None:
                return None
            if not _EMAIL.fullmatch(email):
                self.issue(_join(path, "service_account"), f"{email!r} is not an e-mail address")
                return None
            return f"serviceAccount:{email}"
        member = self.string(raw["member"], _join(path, "member"))
        if member is None:
            return None
        kind, _, rest = member.partition(":")
        if kind not in _MEMBER_KINDS or not rest:
            self.issue(
                _join(path, "member"),
                f"{member!r} must be KIND:VALUE with KIND one of {', '.join(_MEMBER_KINDS)} "
                "(use service_account for service accounts)",
            )
            return None
        return member

    def functions(
        self, value: object, requests: tuple[str, ...], dead_letters: tuple[str, ...]
    ) -> dict[str, Function]:
        if value is None:
            self.issue("functions", "is required (at least one function)")
            return {}
        functions: dict[str, Function] = {}
        for name, item in self.mapping(value, "functions").items():
            function = self.function(name, item, requests, dead_letters)
            if function is not None:
                functions[name] = function
        return functions

    def function(
        self, name: str, value: object, requests: tuple[str, ...], dead_letters: tuple[str, ...]
    ) -> Function | None:
        path = _join("functions", name)
        if not _FUNCTION.fullmatch(name):
            self.issue(
                path,
                "names are 1-63 lowercase letters, digits and hyphens, starting with a letter",
            )
            return None
        known = (
            "source", "entry_point", "topic", "subscription", "delivery", "url", "push_identity",
            "runtime_identity", "ack_deadline", "retry", "dead_letter_topic",
            "max_delivery_attempts", "environment", "region", "runtime", "memory", "timeout",
            "max_instances", "concurrency", "ingress",
        )  # fmt: skip
        raw = self.mapping(value, path, known)
        if not isinstance(value, dict):
            return None
        source = self.source(raw.get("source"), _join(path, "source"))
        entry_point = self.string(raw.get("entry_point"), _join(path, "entry_point"))
        if entry_point is not None and (
            not entry_point.isidentifier() or keyword.iskeyword(entry_point)
        ):
            self.issue(_join(path, "entry_point"), f"{entry_point!r} is not a Python identifier")
        elif entry_point is not None and source is not None and self.check_sources:
            self.entry_point_defined(entry_point, source, _join(path, "entry_point"))
        topic = self.string(raw.get("topic"), _join(path, "topic"))
        if topic is not None and topic not in requests and topic not in dead_letters:
            self.issue(
                _join(path, "topic"),
                f"{topic} is not declared in topics.requests or topics.dead_letter",
            )
        delivery = self.delivery(raw.get("delivery"), _join(path, "delivery"))
        subscription = self.string(
            raw.get("subscription"), _join(path, "subscription"), required=False
        )
        if delivery == "eventarc":
            if subscription is not None:
                self.issue(
                    _join(path, "subscription"),
                    "does not apply to eventarc delivery: Eventarc creates and names the "
                    "trigger's subscription itself (eventarc-REGION-TRIGGER-sub-NNN)",
                )
            subscription = ""
        else:
            subscription = subscription or f"{name}-{delivery}"
            self.resource_name(subscription, _join(path, "subscription"))
        url = self.string(raw.get("url"), _join(path, "url"), required=False)
        if url is None:
            url = DEFAULT_URL.format(region=self.region, project=self.project, name=name)
        elif not url.startswith(("https://", "http://")):
            self.issue(_join(path, "url"), f"must be an http(s) URL, got {url!r}")
        push_identity = self.string(
            raw.get("push_identity"), _join(path, "push_identity"), required=False
        )
        if delivery in ("push", "eventarc") and push_identity is None:
            self.issue(
                _join(path, "push_identity"),
                f"is required for {delivery} delivery (the service account whose OIDC token "
                "authenticates each delivery: the only caller allowed to invoke the function)",
            )
        if delivery == "pull" and push_identity is not None:
            self.issue(_join(path, "push_identity"), "only applies to push delivery")
        dead_letter_topic = self.string(
            raw.get("dead_letter_topic"), _join(path, "dead_letter_topic"), required=False
        )
        if dead_letter_topic is None:
            self.issue(
                _join(path, "dead_letter_topic"),
                f"is required: without one, a request that {name} always fails is redelivered "
                "forever (name a topic of topics.dead_letter; one that no function listens on "
                "keeps what lands there)",
            )
        elif dead_letter_topic not in dead_letters:
            self.issue(
                _join(path, "dead_letter_topic"),
                f"{dead_letter_topic} is not declared in topics.dead_letter",
            )
        elif dead_letter_topic == topic:
            self.issue(
                _join(path, "dead_letter_topic"),
                f"must differ from the topic {name} listens on ({topic}): Pub/Sub would hand "
                "each dead-lettered request back to the same subscription, forever",
            )
        attempts_path = _join(path, "max_delivery_attempts")
        attempts = self.integer(raw.get("max_delivery_attempts"), attempts_path, 5, 5, 100)
        if "max_delivery_attempts" in raw and dead_letter_topic is None:
            self.issue(attempts_path, "only applies with a dead_letter_topic")
        ack_deadline = int(
            self.seconds(raw.get("ack_deadline"), _join(path, "ack_deadline"), 60, 10, 600)
        )
        service = self.service(raw, path, delivery, ack_deadline)
        return Function(
            name=name,
            source=source or self.base_dir,
            entry_point=entry_point or "",
            topic=topic or "",
            subscription=subscription,
            delivery=delivery,
            url=url,
            push_identity=push_identity,
            runtime_identity=self.string(
                raw.get("runtime_identity"), _join(path, "runtime_identity"), required=False
            ),
            ack_deadline_seconds=ack_deadline,
            retry=self.retry(raw.get("retry"), _join(path, "retry")),
            dead_letter_topic=dead_letter_topic,
            max_delivery_attempts=attempts,
            environment=self.environment(raw.get("environment"), _join(path, "environment")),
            **service,
        )

    def service(
        self, raw: dict[str, Any], path: str, delivery: Delivery, ack_deadline: int
    ) -> dict[str, Any]:
        """Where and how the function runs: region, runtime, memory, timeout, scaling, ingress."""
        region = self.string(raw.get("region"), _join(path, "region"), required=False)
        if region is not None and not is_region(region):
            self.issue(_join(path, "region"), f"{region!r} is not {REGION_RULE}")
        runtime = self.string(raw.get("runtime"), _join(path, "runtime"), required=False)
        if runtime is not None and runtime not in RELAY_RUNTIMES:
            why = (
                "relay needs Python 3.11 or later"
                if runtime in PYTHON_RUNTIMES
                else "not a Cloud Run functions Python runtime"
            )
            self.issue(
                _join(path, "runtime"),
                f"unknown runtime {runtime!r}: {why} (one of {', '.join(RELAY_RUNTIMES)})",
            )
        memory = self.string(raw.get("memory"), _join(path, "memory"), required=False)
        if memory is not None:
            size = parse_memory(memory)
            if size is None or not memory_in_bounds(size):
                self.issue(_join(path, "memory"), f"{memory!r} is not {MEMORY_RULE}")
        # An Eventarc trigger invokes an event-driven function: at most 9 minutes, not 60.
        longest = MAX_EVENT_TIMEOUT_SECONDS if delivery == "eventarc" else MAX_HTTP_TIMEOUT_SECONDS
        least = ack_deadline + TIMEOUT_MARGIN_SECONDS
        timeout_path = _join(path, "timeout")
        timeout = self.seconds(raw.get("timeout"), timeout_path, least, 1, longest)
        if "timeout" in raw and timeout < least:
            self.issue(
                timeout_path,
                f"must be at least the ack deadline plus {TIMEOUT_MARGIN_SECONDS}s "
                f"({ack_deadline}s + {TIMEOUT_MARGIN_SECONDS}s = {least}s), got {_fmt(timeout)}: "
                "a function cut off before Pub/Sub's ack deadline answers 504 while its instance "
                "goes on running, and Pub/Sub redelivers, so the request runs twice",
            )
        elif "timeout" not in raw and least > longest:
            self.issue(
                _join(path, "ack_deadline"),
                f"must be at most {longest - TIMEOUT_MARGIN_SECONDS}s for {delivery} delivery: "
                f"the function's timeout (at most {longest}s) must outlast it by "
                f"{TIMEOUT_MARGIN_SECONDS}s",
            )
        ingress = raw.get("ingress", "internal")
        if ingress not in ("internal", "internal-and-gclb", "all"):
            self.issue(
                _join(path, "ingress"),
                f"must be internal, internal-and-gclb or all, got {ingress!r}",
            )
            ingress = "internal"
        return {
            "region": region or self.region,
            "runtime": runtime or DEFAULT_RUNTIME,
            "memory": memory or DEFAULT_MEMORY,
            "timeout_seconds": int(min(max(timeout, least), longest)),
            "max_instances": self.integer(
                raw.get("max_instances"),
                _join(path, "max_instances"),
                DEFAULT_MAX_INSTANCES,
                1,
                MAX_INSTANCES,
            ),
            "concurrency": self.integer(
                raw.get("concurrency"), _join(path, "concurrency"), 1, 1, MAX_CONCURRENCY
            ),
            "ingress": ingress,
        }

    def source(self, value: object, path: str) -> Path | None:
        text = self.string(value, path)
        if text is None:
            return None
        folder = (self.base_dir / text).resolve()
        if self.check_sources:
            if not folder.is_dir():
                self.issue(path, f"folder {text} does not exist (relative to {self.base_dir})")
            elif not (folder / "main.py").is_file():
                self.issue(path, f"{text} has no main.py (what functions-framework loads)")
        return folder

    def entry_point_defined(self, entry_point: str, source: Path, path: str) -> None:
        main = source / "main.py"
        try:
            tree = ast.parse(main.read_bytes(), filename=str(main))
        except (OSError, SyntaxError, ValueError):
            return  # a missing folder is reported on source; a syntax error by functions-framework
        if entry_point not in _top_level_names(tree):
            relative = (
                main.relative_to(self.base_dir) if main.is_relative_to(self.base_dir) else main
            )
            self.issue(path, f"{entry_point} is not defined at the top level of {relative}")

    def delivery(self, value: object, path: str) -> Delivery:
        if value is None or value == "push":
            return "push"
        if value == "pull":
            return "pull"
        if value == "eventarc":
            return "eventarc"
        if isinstance(value, list):
            self.issue(
                path,
                f"one delivery path per function, got {value!r}: push and an Eventarc trigger "
                "would each get every request, so every request would run twice",
            )
        else:
            self.issue(path, f"must be push, pull or eventarc, got {value!r}")
        return "push"

    def environment(self, value: object, path: str) -> Mapping[str, str]:
        environment: dict[str, str] = {}
        for key, item in self.mapping(value, path).items():
            problem = environment_problem(key)
            if problem is not None:
                self.issue(_join(path, key), problem)
            elif isinstance(item, bool) or not isinstance(item, str | int | float):
                self.issue(_join(path, key), f"must be a string or number, got {_kind(item)}")
            else:
                environment[key] = self.substitute(str(item), _join(path, key))
        return MappingProxyType(environment)

    # -- cross references -------------------------------------------------------------------

    def cross_check(
        self,
        requests: tuple[str, ...],
        completion: str | None,
        dead_letters: tuple[str, ...],
        completion_subs: tuple[Subscription, ...],
        functions: dict[str, Function],
        identities: dict[str, Identity],
    ) -> None:
        topics = {*requests, *dead_letters, *([completion] if completion else [])}
        subscriptions: dict[str, str] = {}
        for function in functions.values():
            path = _join(_join("functions", function.name), "subscription")
            if function.delivery == "eventarc":
                continue  # Eventarc names its trigger's subscription
            if function.subscription in subscriptions:
                self.issue(
                    path,
                    f"{function.subscription} is also used at "
                    f"{subscriptions[function.subscription]}",
                )
            subscriptions.setdefault(function.subscription, path)
        for sub in completion_subs:
            path = _join("topics.completion.subscriptions", sub.name)
            if sub.name in subscriptions:
                self.issue(path, f"{sub.name} is also used at {subscriptions[sub.name]}")
            subscriptions.setdefault(sub.name, path)

        # Pub/Sub drops what is published to a topic nobody subscribes to: every request topic
        # needs a function listening. A dead-letter topic without one is terminal: provisioning
        # gives it a pull subscription of the same name, which keeps what lands there.
        listened = {function.topic for function in functions.values()}
        for index, name in enumerate(requests):
            if name not in listened:
                self.issue(f"topics.requests[{index}]", f"no function listens on {name}")
        for index, name in enumerate(dead_letters):
            path = f"topics.dead_letter[{index}]"
            if name in listened:
                continue
            if name in subscriptions:
                self.issue(
                    path,
                    f"{name} is terminal (no function listens on it) and its subscription, of the "
                    f"same name, is also used at {subscriptions[name]}",
                )
            subscriptions.setdefault(name, path)
        self._dead_letter_cycles(functions)

        for function in functions.values():
            path = _join("functions", function.name)
            for key in ("push_identity", "runtime_identity"):
                ref = cast(str | None, getattr(function, key))
                if ref is None:
                    continue
                if ref not in identities:
                    self.issue(_join(path, key), f"{ref} is not declared in identities")
                    continue
                identity = identities[ref]
                if key == "push_identity":
                    if identity.member and identity.service_account is None:
                        self.issue(
                            _join(path, key), f"{ref} must be a service_account to sign OIDC tokens"
                        )
                    if function.name not in identity.invokes:
                        self.issue(
                            _join(_join("identities", ref), "invokes"),
                            f"must include {function.name} (it is its push_identity)",
                        )
                elif completion and completion not in identity.publishes:
                    self.issue(
                        _join(_join("identities", ref), "publishes"),
                        f"must include {completion} (where {function.name} publishes results)",
                    )

        for identity in identities.values():
            path = _join("identities", identity.name)
            self._refs(identity.publishes, topics, f"{path}.publishes", "is not a declared topic")
            self._refs(identity.waits_on, topics, f"{path}.waits_on", "is not a declared topic")
            self._refs(
                identity.subscribes,
                set(subscriptions),
                f"{path}.subscribes",
                "is not a declared subscription",
            )
            self._refs(
                identity.invokes, set(functions), f"{path}.invokes", "is not a declared function"
            )

    def _dead_letter_cycles(self, functions: dict[str, Function]) -> None:
        """Refuse dead-letter chains that come back: such a request would circle forever.

        Every function has a dead-letter topic, so a chain without a cycle ends at a topic no
        function listens on (a terminal one). Self-loops are reported on the function itself.
        """
        listeners: dict[str, list[Function]] = {}
        for function in functions.values():
            listeners.setdefault(function.topic, []).append(function)
        reported: set[frozenset[str]] = set()
        for function in functions.values():
            chain = _chain_back(function, listeners)
            if chain is None or frozenset(chain) in reported:
                continue
            reported.add(frozenset(chain))
            steps = " -> ".join(f"{functions[name].topic} ({name})" for name in chain)
            self.issue(
                _join(_join("functions", function.name), "dead_letter_topic"),
                f"the dead-letter chain comes back: {steps} -> {function.topic}; a request that "
                "fails everywhere would circle forever (a chain must end at a dead-letter topic "
                "that no function listens on)",
            )

    def _refs(self, names: tuple[str, ...], known: set[str], path: str, message: str) -> None:
        for index, name in enumerate(names):
            if name not in known:
                self.issue(f"{path}[{index}]", f"{name} {message}")


def _chain_back(start: Function, listeners: dict[str, list[Function]]) -> list[str] | None:
    """The functions of a dead-letter chain from `start` back to its topic, if there is one."""
    paths: list[list[Function]] = [[start]]
    seen = {start.name}
    while paths:
        path = paths.pop(0)
        target = path[-1].dead_letter_topic
        if target is None or target == path[-1].topic:
            continue  # no dead-letter topic, or a self-loop: each reported on the function
        if target == start.topic:
            return [function.name for function in path]
        for following in listeners.get(target, []):
            if following.name not in seen:
                seen.add(following.name)
                paths.append([*path, following])
    return None


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _any(name: str, path: str) -> bool:
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _fmt(seconds: float) -> str:
    return f"{seconds:g}s"
