#!/usr/bin/env python3
"""Import cycles between the top-level modules of each crate.

Usage: scripts/module-cycles.py [--graph] [CRATE_SRC_DIR ...]
(default: every crates/*/src). A module depends on another when its code
names it: `use crate::x`, a `crate::x::...` path, or (in the crate root)
`x::...`; a name imported from the crate root (`crate::{A, b}`,
`crate::Type`, `super::` in a top-level module) is an edge to the root.
Nested modules count as their top-level module; `#[cfg(test)]` (or
`#[cfg(all(test, ..))]`) modules at the end of a file are left out (tests may use anything). The crate root
(lib.rs, main.rs) counts in cycles when it defines anything besides
`mod`, `use` and `pub use` lines, and then only through its code and its
private `use` lines: its `pub use` re-exports are a table of contents, not
a dependency. A root that is only a table of contents is shown, with its
re-export edges, but never counted.
Prints each crate's cycles (strongly connected modules) and, with --graph,
its edges. Exits 1 when a crate has a cycle.
"""

import os
import re
import sys


def modules(src):
    """Top-level module name -> the text of its files."""
    texts = {}
    for dirpath, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            top = parts[0] if parts and parts[0] not in ("main", "lib") else "(root)"
            text = open(path, encoding="utf-8").read()
            text = re.split(r"#\[cfg\((?:all\()?test\b[^\]]*\]\s*(?:pub(?:\([^)]*\))?\s+)?mod tests\s*\{", text)[0]
            texts.setdefault(top, []).append((parts, text))
    return texts


ITEM = re.compile(r"(?:pub(?:\([^)]*\))?\s+)?(?:mod\s+\w+\s*;|use\s[^;]*;)")
PUB_USE = re.compile(r"\bpub(?:\([^)]*\))?\s+use\s[^;]*;")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def only_contents(text):
    """True when a crate root holds nothing but `mod`, `use` and `pub use`
    items (with their attributes)."""
    rest = re.sub(r"#!?\[[^\]]*\]", "", strip_comments(text))
    return not ITEM.sub("", rest).strip()


def crate_paths(text):
    """First segments of the paths named from the crate root: `crate::x`,
    and each item of `crate::{a, b::c}`."""
    found = re.findall(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*)", text)
    for group in re.finditer(r"\bcrate::\{", text):
        depth, i, item, items = 1, group.end(), "", []
        while i < len(text) and depth:
            c = text[i]
            depth += {"{": 1, "}": -1}.get(c, 0)
            if depth == 1 and c == ",":
                items.append(item)
                item = ""
            elif depth >= 1:
                item += c
            i += 1
        items.append(item)
        found += [m.group(0) for m in (re.match(r"\s*\w+", it) for it in items) if m]
    return [name.strip() for name in found]


def edges(texts):
    """Module -> the modules it names, and whether the root counts."""
    names = set(texts)
    graph = {}
    root_counts = False
    for top, files in texts.items():
        out = set()
        for parts, text in files:
            code = strip_comments(text)
            if top == "(root)":
                root_counts |= not only_contents(text)
                if root_counts:
                    code = PUB_USE.sub("", code)
                code = re.sub(r"\b(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*;", "", code)
            for name in crate_paths(code):
                out.add(name if name in names else "(root)")
            if len(parts) == 1 and "super::" in code and top != "(root)":
                out.add("(root)")
            if top == "(root)":
                out |= set(re.findall(r"\b([a-z_][a-z0-9_]*)::", code)) & names
        out.discard(top)
        graph[top] = sorted(out)
    return graph, root_counts


def cycles(graph):
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv):
    show = "--graph" in argv
    dirs = [a for a in argv if a != "--graph"]
    if not dirs:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates")
        dirs = sorted(
            os.path.join(root, c, "src")
            for c in os.listdir(root)
            if os.path.isdir(os.path.join(root, c, "src"))
        )
    failed = False
    for src in dirs:
        graph, root_counts = edges(modules(src))
        found = cycles(
            graph
            if root_counts
            else {
                m: [o for o in out if o != "(root)"]
                for m, out in graph.items()
                if m != "(root)"
            }
        )
        crate = os.path.basename(os.path.dirname(os.path.normpath(src)))
        root = "counted" if root_counts else "a table of contents, not counted"
        print(f"{crate}: {'cycles ' + str(found) if found else 'no cycle'} (root {root})")
        if show:
            for module, out in sorted(graph.items()):
                print(f"  {module} -> {', '.join(out) if out else '(none)'}")
        failed |= bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
