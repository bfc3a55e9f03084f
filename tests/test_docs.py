"""The documentation against the code (issue 24): every command in a fenced shell code block of README.md,
CONTRIBUTING.md, docs/*.md and the folders' READMEs that runs one of the project's Python scripts or modules
parses against that script's own argparse (its main() is called with parse_args stopped right after parsing:
nothing runs), and there are no indented code blocks that would escape that check; every path in the first
column of CONTRIBUTING.md's layout table exists, and the table names every top-level entry and module; links
between the docs resolve; the test scripts' --help is self-contained."""

import argparse
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md"),
               *(p for p in ROOT.glob("*/README.md") if p.parent.name not in ("third_party", ".venv"))])
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
OPERATORS = {"&&", "||", ";", "|", "(", ")", "&"}
# a command's own prefixes before the program: VAR=value, and these wrappers
WRAPPERS = {"sudo", "time", "exec", "nohup", "env"}
# optional packages (requirements-export.txt) a script imports at the top; without them its commands skip
OPTIONAL = {"onnx", "onnxruntime", "cv2"}


def code_blocks(path: Path):
    """(line number, line) of every line of the fenced shell code blocks, a continued line (ending in a
    backslash) joined with the next ones and numbered by its first."""
    in_block, shell, pending, first = False, False, "", 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```\s*(\S*)", line)
        if fence:
            in_block, shell = not in_block, fence.group(1).lower() in SHELL_BLOCKS
            continue
        if not (in_block and shell):
            continue
        first = first or n
        line = re.sub(r"^\s*\$ ", "", line)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield first, pending + line
        pending, first = "", 0


def commands(line: str):
    """The simple commands of one shell line as lists of words (comments and redirections dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.wordchars += "~-./=*$:,@%+{}[]"
    words: list[str] = []
    for tok in lexer:
        if tok in OPERATORS:
            if words:
                yield words
            words = []
        elif tok.startswith((">", "<")):
            next(lexer, None)                # the redirection's target
        else:
            words.append(tok)
    if words:
        yield words


def program(words: list[str]):
    """(script path or module name, its arguments) when the command runs one of the project's Python files
    or modules (with python, .venv/bin/python, torchrun, or the script itself), else None."""
    while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in WRAPPERS):
        words = words[1:]
    if not words:
        return None
    name = Path(words[0]).name
    rest = words[1:]
    if re.fullmatch(r"python(3(\.\d+)?)?", name):
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            rest = rest[1:]                  # the interpreter's own options (-u, -X ...)
        if rest[:1] == ["-m"] and len(rest) > 1:
            ours = (ROOT / rest[1].split(".")[0]).is_dir()       # not pytest, pip, venv ...
            return ("module", rest[1], rest[2:]) if ours else None
        if rest and rest[0].endswith(".py"):
            return ("script", rest[0], rest[1:])
        return None
    if name == "torchrun":                   # torchrun's options, then the script and its arguments
        for i, w in enumerate(rest):
            if w.endswith(".py"):
                return ("script", w, rest[i + 1:])
        return None
    if words[0].endswith(".py"):
        return ("script", words[0], rest)
    return None


def ours(found) -> bool:
    """Not a placeholder for the user's own script (my_script.py)."""
    return found is not None and not (found[0] == "script" and Path(found[1]).name.startswith("my_"))


def doc_commands():
    for path in DOCS:
        for n, line in code_blocks(path):
            for words in commands(line):
                found = program(words)
                if ours(found):
                    yield pytest.param(*found, id=f"{path.relative_to(ROOT)}:{n}:{' '.join(words)[:50]}")


class Parsed(Exception):
    pass


def load(kind: str, name: str):
    """The module of a `python -m NAME` (its __main__ for a package) or of a script path."""
    if kind == "module":
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"no module {name}"
        return importlib.import_module(f"{name}.__main__" if spec.submodule_search_locations else name)
    path = (ROOT / name).resolve()
    assert path.is_file() and ROOT in path.parents, f"{name}: not a file of this repository (a user's own " \
        "script is named my_*.py in the docs)"
    spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind, name, argv", list(doc_commands()))
def test_documented_command_parses(kind, name, argv, monkeypatch, capsys):
    try:
        module = load(kind, name)
    except ImportError as exc:
        if exc.name in OPTIONAL:
            pytest.skip(f"{exc.name} is not installed (requirements-export.txt)")
        raise
    if kind == "module" and name == "caffe_torch" and argv[:1] == ["-m"]:
        assert len(argv) > 1                 # `-m MODULE args...` goes to MODULE untouched (see its main)
        return

    def parse_then_stop(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        raise Parsed(parsed)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises((Parsed, SystemExit)) as stop:
        module.main(argv)
    if stop.type is SystemExit:              # --help exits 0; a usage error exits 2 with its message
        assert stop.value.code == 0, f"{name} {' '.join(argv)}: {capsys.readouterr().err.strip()}"


def test_no_indented_code_blocks():
    """Commands go in fenced blocks (checked above): a line indented 4 spaces after a blank line, outside a
    fence and not a list item or table row, is an indented code block."""
    found = []
    for path in DOCS:
        fenced, previous = False, ""
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"^\s*```", line):
                fenced = not fenced
            elif not fenced and not previous.strip() and re.match(r"^ {4,}[^ \-*|0-9]", line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
            previous = line
    assert not found, found


def test_the_docs_have_commands_to_check():
    """The extraction above finds the README's two commands' scripts and the docs' recipes (an empty
    parametrisation would pass silently)."""
    found = {(p.values[0], p.values[1]) for p in doc_commands()}
    for script in ("trainAug.py", "test_identification.py", "test_verification.py", "data_utils.py"):
        assert any(name.endswith(script) for _, name in found), script


def test_readme_test_command_is_what_ci_runs():
    """README's first code block: the main job, then the test command, which .ci/run ends in."""
    lines = [line for _, line in code_blocks(ROOT / "README.md")][:2]
    assert lines[0].startswith("bash tools/demo.sh") and lines[1].startswith("bash tools/test.sh ")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "exec bash tools/test.sh"


def layout_paths():
    """The paths in the first column of CONTRIBUTING.md's layout table: a later name of a cell with no '/'
    before its end (a file, or a folder written `name/`) lies in the first one's folder."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", row.split("|")[1])
        base = Path(names[0]).parent
        for i, item in enumerate(names):
            yield item if i == 0 or "/" in item.rstrip("/") else str(base / item)


def test_contributing_layout_table_names_existing_files():
    paths = list(layout_paths())
    assert len(paths) > 40
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"CONTRIBUTING.md's layout table names files that do not exist: {missing}"


# the package folders whose every module is named in the table (their __init__.py and test_*.py files aside)
LAYOUT_PACKAGES = ("caffe_torch", "speaker", "voxdata", "bench", "tools", "tests")
LAYOUT_EXEMPT = {"README.md", "CONTRIBUTING.md", ".gitignore"}     # the docs themselves, git's own file


def test_contributing_layout_table_covers_the_repository():
    """Every top-level file or folder git tracks, and every module directly in the package folders, is named
    in the table (a folder counts as named when the table names it or a path inside it): a new file that the
    table leaves out fails here."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (the tracked files are git's list)")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    named = {p.rstrip("/") for p in layout_paths()}
    top = {f.split("/")[0] for f in files} - LAYOUT_EXEMPT
    missing = sorted(t for t in top if t not in named and not any(n.startswith(t + "/") for n in named))
    modules = [f for f in files if f.count("/") == 1 and f.endswith(".py") and f.split("/")[0] in LAYOUT_PACKAGES
               and not Path(f).name.startswith("test_") and Path(f).name != "__init__.py"]
    missing += [f for f in modules if f not in named]
    assert not missing, f"CONTRIBUTING.md's layout table does not name: {missing}"


def unsaid_defaults(parser: argparse.ArgumentParser) -> list[str]:
    """The options with a default that --help does not show: no help text at all (argparse then prints
    nothing, whatever the formatter), or a help without "default" under a formatter that does not add it."""
    adds = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    return [a.option_strings[0] for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS and a.default is not None and a.default is not False
            and a.default != argparse.SUPPRESS and not (a.help and (adds or "default" in a.help))]


def _script_parser(script: str) -> argparse.ArgumentParser:
    if script.startswith("train"):           # trainAug.py / trainNoAug.py: speaker/train.py's parser
        return importlib.import_module("speaker.train").build_parser(augment=script == "trainAug")
    return importlib.import_module(script).build_parser()


@pytest.mark.parametrize("script", ["test_identification", "test_verification", "export_embedder", "trainAug",
                                    "trainNoAug"])
def test_help_is_self_contained(script):
    """--help says every default itself (each option with a default says it; no "see above" pointing at a
    docstring --help does not show) and the exit statuses of the test scripts."""
    parser = _script_parser(script)
    text = parser.format_help()
    assert "see above" not in text and "module docstring" not in text
    unsaid = unsaid_defaults(parser)
    assert not unsaid, f"{script} --help: options whose default it does not say: {unsaid}"
    if script.startswith("test_"):
        assert "Exit status: 0 done; 1 error" in " ".join(text.split())
        assert "2 the command line does not parse" in " ".join(text.split())


def test_data_utils_commands_help_says_every_default():
    import data_utils

    parser = data_utils._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    unsaid = {name: unsaid_defaults(sub) for name, sub in commands.items()}
    assert not any(unsaid.values()), f"data_utils.py: options whose default --help does not say: {unsaid}"


def test_data_utils_help_names_every_command():
    import data_utils

    parser = data_utils._parser()
    first_line = parser.format_help().split("\n\n")[1].splitlines()[0]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"synth", "cache", "lists"} <= set(commands)
    assert all(f"`{name}`" in first_line for name in commands), first_line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_links_between_the_docs_resolve():
    """Every relative link of the docs names an existing file, and its #anchor a heading of that file."""
    broken = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue                     # https:, mailto:
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), flags=re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
