"""Read a Dockerfile and a .dockerignore the way `docker build` does, for tests that do what an
image does without a Docker engine.

`instructions` joins continuation lines, drops comments and splits each instruction into its
keyword, flags (`--from=builder`) and arguments; exec forms (`["a", "b"]`) are read as JSON.
`stages` splits the instructions at each FROM. `build_context` copies the files a
.dockerignore lets through (last matching pattern wins, `!` re-includes, a pattern matching a
directory covers what is under it, `**` spans directories).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN, CMD, ...
    flags: dict[str, str]
    args: list[str]  # exec form: the JSON list; shell form: shlex-split words
    text: str  # everything after the keyword (flags included), as written

    @property
    def exec_form(self) -> bool:
        return self.text.lstrip().startswith("[")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        (found,) = self.all(keyword)
        return found


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends with a continuation line"
    return lines


def _instruction(line: str) -> Instruction:
    keyword, _, rest = line.partition(" ")
    rest = rest.strip()
    flags: dict[str, str] = {}
    # flags come first: COPY --from=builder ..., HEALTHCHECK --interval=10s ... CMD [...]
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    if keyword.upper() == "HEALTHCHECK":
        sub, _, rest = rest.partition(" ")
        flags["type"] = sub.upper()
        rest = rest.strip()
    args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return Instruction(keyword.upper(), flags, [str(a) for a in args], rest)


def instructions(path: Path) -> list[Instruction]:
    return [_instruction(line) for line in _logical_lines(path.read_text())]


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM, substituted in FROM) and the stages."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for item in instructions(path):
        if item.keyword == "ARG" and not found:
            name, _, default = item.args[0].partition("=")
            args[name] = default
        elif item.keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], item.args[0])
            alias = item.args[2] if len(item.args) == 3 and item.args[1].upper() == "AS" else None
            found.append(Stage(base, alias))
        else:
            assert found, f"{item.keyword} before the first FROM"
            found[-1].instructions.append(item)
    return args, found


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((keep, _regex(pattern)))
    return rules


def _ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # the path and parents
    ignored = False
    for keep, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not keep
    return ignored


def build_context(root: Path, dest: Path) -> Path:
    """Copy the files of `root` that its .dockerignore lets into a build, to `dest`."""
    rules = _ignore_rules(root / ".dockerignore")
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]  # never part of a context worth walking
        for name in files:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if not _ignored(relative, rules):
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return dest
