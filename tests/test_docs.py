"""The documentation against what it documents, without Terraform or a network.

terraform/README.md's inputs and outputs tables are written by hand. A user who follows
them and sets a variable the module does not have gets `terraform apply` refusing the
run ("An argument named ... is not expected here" / "Value for undeclared variable");
one who trusts a wrong default or misses a required variable deploys something else
than meant. So every variable in terraform/variables.tf must be in the table with its
type, default and description as written there, every output of terraform/outputs.tf
with its description, and nothing else; every `-var name=` in the docs must name a
variable. The files are read with tests/hcl_eval.py, as test_terraform.py reads them.

Every relative link in the docs must reach a file of the repository, and an `#anchor`
a heading of its target, so moving a section cannot strand a reference to it. README.md
stays short: the reference lives in docs/.

`python tests/test_docs.py` prints both tables as variables.tf and outputs.tf give them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hcl_eval import Module  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TF = ROOT / "terraform"
TF_README = TF / "README.md"
README_MAX_LINES = 160


def docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md", TF_README]


@pytest.fixture(scope="module")
def module():
    return Module(TF)


# --------------------------------------------------------------------------- markdown


FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link syntax and punctuation dropped, lower case,
    spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(text):
        m = HEADING.match(line)
        if m:
            s = slug(m.group(2))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
        out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline and reference-style link in the prose."""
    out = []
    for n, line in prose_lines(text):
        # Link text may be code (`[`x`](y)`); a code span elsewhere holds no link.
        line = re.sub(r"`[^`]*`", "code", line)
        out += [(n, t) for t in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line)]
        out += [(n, t) for t in re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", line)]
    return out


def broken_links(doc: Path) -> list[str]:
    problems = []
    for n, target in links(doc.read_text()):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        where = f"{doc.relative_to(ROOT)}:{n}: [{target}]"
        if not dest.is_relative_to(ROOT):
            problems.append(f"{where} leaves the repository")
        elif not dest.exists():
            problems.append(f"{where}: {dest.relative_to(ROOT)} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{where}: {dest.relative_to(ROOT)} has no heading #{anchor}")
        elif anchor and dest.suffix != ".md" and not re.fullmatch(r"L\d+(-L\d+)?", anchor):
            problems.append(f"{where}: #{anchor} in a file that has no headings")
    return problems


def table(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading` (before the next heading), each
    a list of cells with `\\|` unescaped."""
    rows, inside = [], False
    for _, line in prose_lines(text):
        m = HEADING.match(line)
        if m:
            if inside:
                break
            inside = m.group(2) == heading
            continue
        if not inside:
            continue
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
        elif rows:
            break
    assert rows, f"no table under the heading {heading!r}"
    return rows[2:]  # after the header and delimiter rows


def code(cell: str) -> str:
    m = re.fullmatch(r"`([^`]*)`", cell)
    return m.group(1) if m else cell


def one_line(s: str) -> str:
    return " ".join(s.split())


# --------------------------------------------------------------------------- terraform


def type_source(body: dict) -> str:
    """A variable's type as source text (python-hcl2 wraps non-keyword types in ${...})."""
    t = body["type"]
    return t[2:-1] if t.startswith("${") and t.endswith("}") else t


def outputs(module: Module) -> dict[str, dict]:
    out = {}
    for block in module.blocks.get("output", []):
        for name, body in block.items():
            out[name.strip('"')] = body
    return out


def inputs_problems(text: str, module: Module) -> list[str]:
    rows = table(text, "Inputs")
    problems = [f"row {r} does not have 4 cells (name, type, default, description)" for r in rows if len(r) != 4]
    documented = {}
    for r in (r for r in rows if len(r) == 4):
        name = code(r[0])
        if name in documented:
            problems.append(f"`{name}` is listed twice")
        documented[name] = r
    for name in documented.keys() - module.variables.keys():
        problems.append(f"`{name}` is listed but variables.tf declares no such variable")
    for name, body in module.variables.items():
        if name not in documented:
            problems.append(f"variable `{name}` is missing")
            continue
        _, typ, default, description = documented[name]
        if one_line(code(typ)) != one_line(type_source(body)):
            problems.append(f"`{name}`: type {code(typ)!r}, variables.tf says {type_source(body)!r}")
        if "default" not in body:
            if default != "required":
                problems.append(f"`{name}` has no default in variables.tf (required) but the table shows {default}")
        else:
            want = module.value(body["default"])
            try:
                shown = json.loads(code(default))
            except ValueError:
                shown = default
            if default == "required" or shown != want or type(shown) is not type(want):
                problems.append(f"`{name}`: default {default}, variables.tf says `{json.dumps(want)}`")
        want = one_line(module.value(body["description"]))
        if one_line(description) != want:
            problems.append(f"`{name}`: description {description!r}, variables.tf says {want!r}")
    return problems


def outputs_problems(text: str, module: Module) -> list[str]:
    rows = table(text, "Outputs")
    problems = [f"row {r} does not have 2 cells (name, description)" for r in rows if len(r) != 2]
    documented = {code(r[0]): r[1] for r in rows if len(r) == 2}
    declared = outputs(module)
    for name in documented.keys() - declared.keys():
        problems.append(f"`{name}` is listed but outputs.tf declares no such output")
    for name, body in declared.items():
        if name not in documented:
            problems.append(f"output `{name}` is missing")
            continue
        want = one_line(module.value(body["description"]))
        if one_line(documented[name]) != want:
            problems.append(f"`{name}`: description {documented[name]!r}, outputs.tf says {want!r}")
    return problems


def tables(module: Module) -> str:
    """Both tables as the .tf files give them, to paste into terraform/README.md."""
    lines = ["| name | type | default | description |", "|---|---|---|---|"]
    for name, body in module.variables.items():
        default = f"`{json.dumps(module.value(body['default']))}`" if "default" in body else "required"
        description = one_line(module.value(body["description"])).replace("|", "\\|")
        lines.append(f"| `{name}` | `{one_line(type_source(body))}` | {default} | {description} |")
    lines += ["", "| name | description |", "|---|---|"]
    for name, body in outputs(module).items():
        lines.append(f"| `{name}` | {one_line(module.value(body['description'])).replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- tests


def test_the_inputs_table_is_variables_tf(module):
    problems = inputs_problems(TF_README.read_text(), module)
    assert not problems, "terraform/README.md's Inputs table differs from variables.tf:\n  " + "\n  ".join(problems)


def test_the_outputs_table_is_outputs_tf(module):
    problems = outputs_problems(TF_README.read_text(), module)
    assert not problems, "terraform/README.md's Outputs table differs from outputs.tf:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda t: re.sub(r"^\| `tags` \|.*\n", "", t, flags=re.M), "variable `tags` is missing"),
        (lambda t: t.replace("| `region` |", "| `aws_region` |"), "`aws_region` is listed but"),
        (lambda t: t.replace("| `number` | `14` |", "| `number` | `30` |"), "`log_retention_days`: default `30`"),
        (lambda t: t.replace("| `number` | `14` |", '| `number` | `"14"` |'), "`log_retention_days`: default"),
        (lambda t: t.replace("| `bool` | `false` | Let jobs", "| `string` | `false` | Let jobs"), "`fault_injection`: type"),
        (lambda t: t.replace("Tags added to every resource.", "Tags."), "`tags`: description"),
    ],
)
def test_a_wrong_inputs_row_is_named(module, edit, named):
    text = TF_README.read_text()
    edited = edit(text)
    assert edited != text, "the edit did not apply: the table changed shape"
    assert any(named in p for p in inputs_problems(edited, module)), inputs_problems(edited, module)


def test_a_required_variable_must_be_shown_as_required(tmp_path, module):
    (tmp_path / "variables.tf").write_text('variable "name" {\n  type = string\n  description = "A name."\n}\n')
    required = Module(tmp_path)
    text = "## Inputs\n\n| name | type | default | description |\n|---|---|---|---|\n"
    assert inputs_problems(text + '| `name` | `string` | `""` | A name. |\n', required) == [
        '`name` has no default in variables.tf (required) but the table shows `""`'
    ]
    assert inputs_problems(text + "| `name` | `string` | required | A name. |\n", required) == []


def test_every_var_on_a_command_line_in_the_docs_is_a_variable(module):
    """`terraform apply -var nmae=...` fails at run time; here it fails first."""
    unknown = []
    for doc in docs():
        for n, line in enumerate(doc.read_text().split("\n"), 1):
            for name in re.findall(r"-var[= ]([A-Za-z_][A-Za-z0-9_-]*)=", line):
                if name not in module.variables:
                    unknown.append(f"{doc.relative_to(ROOT)}:{n}: -var {name}")
    assert not unknown, f"no such Terraform variable: {unknown}"


def test_the_deploy_command_sets_every_required_variable(module):
    required = {n for n, b in module.variables.items() if "default" not in b}
    for line in TF_README.read_text().split("\n"):
        if "terraform apply" in line and not line.lstrip().startswith("#"):
            given = set(re.findall(r"-var[= ]([A-Za-z_][A-Za-z0-9_-]*)=", line))
            assert required <= given, f"{line.strip()!r} does not set {sorted(required - given)}"


@pytest.mark.parametrize("doc", docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(doc):
    assert doc.exists(), f"{doc.relative_to(ROOT)} is gone"
    problems = broken_links(doc)
    assert not problems, "\n".join(problems)


def test_the_link_check_sees_a_broken_link_and_anchor(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## The `jobs-todo` message\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](docs/a.md#the-jobs-todo-message) [gone](docs/b.md) [bad](docs/a.md#nope)\n"
        "`[not a link](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n[web](https://example.com/x)\n"
    )
    assert broken_links(doc) == [
        "README.md:1: [docs/b.md]: docs/b.md does not exist",
        "README.md:1: [docs/a.md#nope]: docs/a.md has no heading #nope",
    ]


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference material to docs/design.md"
    )


if __name__ == "__main__":
    print(tables(Module(TF)))
