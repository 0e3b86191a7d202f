"""The page has no build step: web/index.html loads app.js as an ES module, and every import in web/
names a file beside it by a relative path. A bare specifier ("lit") would need a bundler or an import
map; an absolute one ("/app.js") breaks under a reverse proxy's path prefix. Plain text checks that
run without a browser (tests/test_browser.py loads the same graph in Chromium)."""

from __future__ import annotations

import re
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "web"
# `import ... from "s"` and `export ... from "s"` (a statement, not the word inside a string), `import "s"`,
# and `import("s")`.
SPECIFIER = re.compile(
    r"""^\s*(?:import|export)\b[^;"'`]*?\bfrom\s*["']([^"']+)["']"""
    r"""|^\s*import\s*["']([^"']+)["']"""
    r"""|\bimport\s*\(\s*["']([^"']+)["']""",
    re.M,
)


def imports(source: str) -> list[str]:
    # Comments may quote anything; only whole-line ones go, so "https://..." in a specifier stays.
    code = re.sub(r"^\s*//[^\n]*|/\*.*?\*/", "", source, flags=re.S | re.M)
    return [next(g for g in groups if g) for groups in SPECIFIER.findall(code)]


def test_index_loads_one_module_entry():
    scripts = re.findall(r"<script\b[^>]*>", (WEB / "index.html").read_text())
    assert scripts == ['<script type="module" src="app.js">']


def test_every_import_is_a_relative_file_in_web_and_every_module_is_reached():
    reached, todo = set(), ["app.js"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for spec in imports((WEB / name).read_text()):
            assert re.fullmatch(r"\./[\w-]+\.js", spec), (
                f"{name} imports {spec!r}: only ./file.js works without a build"
            )
            assert (WEB / spec[2:]).is_file(), f"{name} imports {spec}, which is not in web/"
            todo.append(spec[2:])
    assert reached == {p.name for p in WEB.glob("*.js")}, "modules no page import reaches"


def test_specifier_pattern_sees_each_import_form():
    # The check above is only as good as this pattern.
    src = 'import a from "./a.js";\nimport {\n  b,\n} from "./b.js";\nimport "./c.js";\nexport { d } from "d";\n'
    src += 'const e = await import("./e.js");\n// import x from "./commented.js"\nconst f = ["from", "to"];\n'
    src += 'import { h } from "https://cdn.example/h.js"; // a trailing comment\n'
    assert imports(src) == ["./a.js", "./b.js", "./c.js", "d", "./e.js", "https://cdn.example/h.js"]
