"""A small Dockerfile parser and the rules ganserve's images must keep (tests/deploy).

The parser follows BuildKit's line handling: a trailing backslash continues the instruction on the
next line (the backslash and the whitespace after it are dropped, the next line's indentation is
kept), comment and blank lines inside a continuation are skipped, and ``ARG``s declared before the
first ``FROM`` are substituted into ``FROM``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex

# Rules: each problem `lint` reports starts with one of these ids.
PINNED_BASE = "pinned-base"
NON_ROOT_USER = "non-root-user"
EXEC_FORM = "exec-form"
NO_TORCH = "no-torch"
HEALTHCHECK = "healthcheck"
HEALTH_MODULE = "ganserve.serve.healthcheck"
EXPOSE = "expose"
ENTRYPOINT = "entrypoint"
READ_ONLY_ENV = "read-only-env"
VENV_ONLY = "venv-only"
WRITABLE_WORKDIR = "writable-workdir"
RULES = (
    PINNED_BASE,
    NON_ROOT_USER,
    EXEC_FORM,
    NO_TORCH,
    HEALTHCHECK,
    EXPOSE,
    ENTRYPOINT,
    READ_ONLY_ENV,
    VENV_ONLY,
    WRITABLE_WORKDIR,
)

VENV = "/opt/venv"
# torch itself, or the train/dev extras (which pull it) in a pip install.
_TORCH = re.compile(r"\btorch\b|\[[^\]]*\b(train|dev)\b[^\]]*\]")
_CONTINUATION = re.compile(r"\\[ \t]*$")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Instruction:
    """One instruction: its keyword (upper case), its text after the keyword, its first line."""

    keyword: str
    args: str
    line: int

    def flags(self) -> tuple[dict[str, str], str]:
        """Leading ``--name=value`` flags and the rest of the arguments."""
        flags, rest = {}, self.args
        while match := re.match(r"--([\w-]+)(?:=(\S*))?\s*", rest):
            flags[match.group(1)] = match.group(2) or ""
            rest = rest[match.end() :]
        return flags, rest

    def exec_form(self, text: str | None = None) -> list[str] | None:
        """The JSON-array (exec) form of the arguments, or None for the shell form."""
        text = (self.args if text is None else text).strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
    """A build stage: its name (or its index), its resolved base and its instructions."""

    name: str
    base: str
    line: int
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """Variables its ENV instructions set (``ENV a=b c=d`` and ``ENV a b``)."""
        out = {}
        for instruction in self.all("ENV"):
            words = shlex.split(instruction.args)
            if words and "=" not in words[0]:
                out[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                out[key] = value
        return out

    def copied_from(self) -> list[tuple[str, list[str]]]:
        """(stage, sources) of each ``COPY --from=stage``."""
        out = []
        for instruction in self.all("COPY"):
            flags, rest = instruction.flags()
            if "from" in flags:
                words = instruction.exec_form(rest) or shlex.split(rest)
                out.append((flags["from"], words[:-1]))
        return out


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined."""
    instructions = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        start = index
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        while _CONTINUATION.search(line):
            line = _CONTINUATION.sub("", line)
            while index < len(lines) and (
                not lines[index].strip() or lines[index].lstrip().startswith("#")
            ):
                index += 1
            if index < len(lines):
                line += lines[index]
                index += 1
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword=keyword.upper(), args=args.strip(), line=start + 1))
    return instructions


def stages(text: str) -> list[Stage]:
    """The build stages, with global ``ARG`` defaults substituted into each ``FROM``."""
    global_args: dict[str, str] = {}
    found: list[tuple[str, str, int, list[Instruction]]] = []
    for instruction in parse(text):
        if instruction.keyword == "FROM":
            _, rest = instruction.flags()
            words = rest.split()
            base = _VARIABLE.sub(
                lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)), words[0]
            )
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(found))
            found.append((name, base, instruction.line, []))
        elif not found:
            if instruction.keyword == "ARG":
                key, _, value = instruction.args.partition("=")
                global_args[key.strip()] = value.strip().strip('"')
        else:
            found[-1][3].append(instruction)
    return [
        Stage(name=name, base=base, line=line, instructions=tuple(body))
        for name, base, line, body in found
    ]


def _pinned(image: str) -> bool:
    """An image reference with a digest, or a tag other than ``latest``."""
    if "$" in image:
        return False  # an ARG without a default: whatever the build passes
    if "@sha256:" in image:
        return True
    name_part = image.rsplit("/", 1)[-1]
    tag = name_part.partition(":")[2]
    return bool(tag) and tag != "latest"


def closure(by_name: dict[str, Stage], name: str) -> list[Stage]:
    """Stage ``name`` and every stage it builds on or copies from, transitively."""
    seen: dict[str, Stage] = {}
    todo = [name]
    while todo:
        stage = by_name.get(todo.pop())
        if stage is None or stage.name in seen:
            continue
        seen[stage.name] = stage
        todo.append(stage.base)
        todo += [source for source, _ in stage.copied_from()]
    return list(seen.values())


def effective(by_name: dict[str, Stage], stage: Stage) -> Stage:
    """``stage`` with the instructions of the stages it is built FROM first: a stage inherits
    USER, ENV, EXPOSE, HEALTHCHECK, ENTRYPOINT and CMD from its base stage."""
    instructions = list(stage.instructions)
    base, seen = by_name.get(stage.base), {stage.name}
    while base is not None and base.name not in seen:
        seen.add(base.name)
        instructions = list(base.instructions) + instructions
        base = by_name.get(base.base)
    return dataclasses.replace(stage, instructions=tuple(instructions))


def lint(
    text: str, *, serving_stages: tuple[str, ...], ports: set[int], runtime_stages: tuple[str, ...]
) -> list[str]:
    """Problems of a Dockerfile, each starting with its rule id; [] when it keeps every rule.

    Args:
        serving_stages: Targets that run the server: no torch, health check, ports, venv only.
        ports: The ports the serving targets must EXPOSE, exactly.
        runtime_stages: Every target meant to run (serving or not): non-root USER, exec form.
    """
    problems = []
    all_stages = stages(text)
    by_name = {stage.name: stage for stage in all_stages}
    for stage in all_stages:
        if stage.base not in by_name and not _pinned(stage.base):
            problems.append(
                f"{PINNED_BASE}: line {stage.line}: FROM {stage.base} has no pinned tag"
            )

    for name in runtime_stages:
        if name not in by_name:
            problems.append(f"{ENTRYPOINT}: no stage named {name!r}")
            continue
        stage = effective(by_name, by_name[name])
        user = stage.last("USER")
        uid = (user.args.split(":")[0] if user else "").strip()
        if not uid.isdigit() or int(uid) == 0:
            problems.append(f"{NON_ROOT_USER}: stage {name}: USER must be a numeric non-root uid")
        for keyword in ("ENTRYPOINT", "CMD"):
            for instruction in stage.all(keyword):
                if instruction.exec_form() is None:
                    problems.append(
                        f"{EXEC_FORM}: stage {name}: line {instruction.line}: {keyword} is not "
                        "a JSON array"
                    )
        problems += _workdir_problems(name, stage, uid)

    for name in serving_stages:
        if name not in by_name:
            continue
        stage = effective(by_name, by_name[name])
        for dependency in closure(by_name, name):
            for instruction in dependency.all("RUN"):
                if _TORCH.search(instruction.args):
                    problems.append(
                        f"{NO_TORCH}: stage {name} builds on {dependency.name}, whose RUN at "
                        f"line {instruction.line} installs torch or the train/dev extras"
                    )
        problems += _health_problems(stage)
        exposed = {
            int(port.split("/")[0]) if port.split("/")[0].isdigit() else -1
            for instruction in stage.all("EXPOSE")
            for port in instruction.args.split()
        }
        if exposed != ports:
            problems.append(
                f"{EXPOSE}: stage {name} exposes {sorted(exposed)}, not {sorted(ports)}"
            )
        entrypoint = stage.last("ENTRYPOINT")
        argv = entrypoint.exec_form() if entrypoint else None
        if not argv or argv[:2] != ["ganserve", "serve"]:
            problems.append(f'{ENTRYPOINT}: stage {name}: ENTRYPOINT must be ["ganserve", "serve"]')
        env = stage.env()
        if (
            env.get("PYTHONDONTWRITEBYTECODE") != "1"
            or not env.get("HOME", "").startswith("/tmp")
            or not env.get("TMPDIR", "").startswith("/tmp")
        ):
            problems.append(
                f"{READ_ONLY_ENV}: stage {name}: needs PYTHONDONTWRITEBYTECODE=1 and HOME, TMPDIR "
                "under /tmp (the root filesystem is read-only)"
            )
        for source, paths in by_name[name].copied_from():
            if source in by_name and paths != [VENV]:
                problems.append(
                    f"{VENV_ONLY}: stage {name} copies {paths} from {source}; only {VENV}"
                )
    return problems


def _workdir_problems(name: str, stage: Stage, uid: str) -> list[str]:
    """A non-root stage's working directory must be its user's: WORKDIR makes a missing one
    owned by root, where the command (gan-train writing its checkpoint) cannot write."""
    workdir = stage.last("WORKDIR")
    path = workdir.args.strip() if workdir else "/"
    if path == "/" or path.startswith("/tmp") or not uid.isdigit() or int(uid) == 0:
        return []
    owned = re.compile(
        rf"(chown\s+(-\S+\s+)*{uid}\b|install\s+(.*\s)?-o\s*{uid}\b).*\s{re.escape(path)}\b"
    )
    if any(owned.search(instruction.args) for instruction in stage.all("RUN")):
        return []
    return [
        f"{WRITABLE_WORKDIR}: stage {name}: WORKDIR {path} is root's; make it {uid}'s first "
        f"(RUN install -d -o {uid} -g {uid} {path})"
    ]


def healthcheck_argv(stage: Stage) -> list[str] | None:
    """The exec-form command of the stage's HEALTHCHECK, or None."""
    instruction = stage.last("HEALTHCHECK")
    if instruction is None:
        return None
    _, rest = instruction.flags()
    keyword, _, command = rest.partition(" ")
    return instruction.exec_form(command) if keyword.upper() == "CMD" else None


def _health_problems(stage: Stage) -> list[str]:
    argv = healthcheck_argv(stage)
    if argv is None:
        return [f"{HEALTHCHECK}: stage {stage.name}: needs HEALTHCHECK CMD [...] (exec form)"]
    if argv[-2:] != ["-m", HEALTH_MODULE]:
        return [
            f"{HEALTHCHECK}: stage {stage.name}: HEALTHCHECK must run `python -m {HEALTH_MODULE}` "
            "(it asks grpc.health.v1.Health)"
        ]
    return []
