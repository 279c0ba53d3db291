#!/usr/bin/env python3
"""Checks that the pmem commands the README and docs/ show are real.

Every `pmem ...` invocation in a shell block (```sh) or an inline code span of
README.md and docs/**/*.md must name a subcommand that `pmem --help` lists
(descending into nested ones such as `pmem module build`), and every `--option`
in it must appear in that subcommand's `--help`. Options in the rows of an
option table headed "`pmem SUB` options" are checked the same way.

    python3 testing/docs/check_commands.py PMEM_BINARY

Prints one line per command checked with a problem, and a summary; exits 1
when any command or option is unknown.
"""

import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Shell words that end a command: pipes, redirections, separators, comments.
STOP = re.compile(r"\s(?:\||>|<|;|&&|\|\||#)|\)|`")
# Subcommands that exist only in another OS's build (this check runs the
# Linux binary): `pmem driver` is Windows-only (testing/windows runs pmem.exe).
OTHER_OS_ONLY = {"driver"}
PROMPT = re.compile(r"^(?:[a-z]+[#$]\s+)?(?:sudo\s+)?(?:[A-Z_]+=\S+\s+)*")


def documents():
    yield REPO / "README.md"
    yield from sorted((REPO / "docs").rglob("*.md"))


@lru_cache(maxsize=None)
def help_text(pmem, path):
    out = subprocess.run([pmem, *path, "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return out.stdout


def subcommands(text):
    names, inside = set(), False
    for line in text.splitlines():
        if line.startswith("Commands:"):
            inside = True
            continue
        if inside:
            m = re.match(r"^  (\S+)", line)
            if not m:
                break
            names.add(m.group(1))
    return names


def invocations(text):
    """(line number, command text after `pmem`) for each pmem invocation."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence in ("sh", "bash", "console", "shell"):
            body = PROMPT.sub("", line.strip())
            for m in re.finditer(r"(?:^|[\s(])pmem\s+([a-z].*)", body):
                yield number, STOP.split(" " + m.group(1))[0].strip()
        elif fence is None:
            for span in re.findall(r"`([^`]+)`", line):
                span = PROMPT.sub("", span)
                if span.startswith("pmem ") and re.match(r"pmem [a-z]", span):
                    yield number, STOP.split(" " + span[5:])[0].strip()


def option_rows(text):
    """(line number, subcommand, option) from tables under "`pmem SUB` options"."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^`pmem ([a-z ]+)` options", line)
        if m:
            current = m.group(1).split()
            continue
        if current and line.startswith("| `--"):
            yield number, current, re.match(r"\| `(--[a-z0-9-]+)", line).group(1)
        elif current and line.strip() and not line.startswith("|"):
            current = None


def check(pmem, words):
    """Problems with one invocation (list of words after `pmem`)."""
    top = help_text(pmem, ())
    path = []
    text = top
    for word in words:
        if word.startswith("-") or word not in subcommands(text):
            break
        path.append(word)
        text = help_text(pmem, tuple(path))
    if not path:
        return [f"unknown subcommand {words[0]!r}"] if words and not words[0].startswith("-") else []
    problems = []
    for word in words[len(path):]:
        option = re.match(r"^(--[a-z0-9][a-z0-9-]*)", word)
        if option and option.group(1) not in re.findall(r"--[a-z0-9][a-z0-9-]*", text):
            problems.append(f"`pmem {' '.join(path)}` has no option {option.group(1)}")
    return problems


def main():
    pmem = sys.argv[1]
    checked = failed = 0
    for doc in documents():
        text = doc.read_text()
        items = [(n, c.split()) for n, c in invocations(text)]
        items += [(n, [*sub, opt]) for n, sub, opt in option_rows(text)]
        for number, words in items:
            if not words or words[0] in ("is", "and", "or", "to", "in", "the") or words[0] in OTHER_OS_ONLY:
                continue
            checked += 1
            for problem in check(pmem, words):
                failed += 1
                print(f"{doc.relative_to(REPO)}:{number}: {problem}")
    print(f"docs commands: {checked} checked, {failed} problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
