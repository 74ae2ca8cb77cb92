"""Build the homework notebooks from their single source, ``notebooks/src/NN_name.py`` (jupytext percent format).

    python notebooks/build.py                   # write notebooks/exercises/ and notebooks/solutions/
    python notebooks/build.py --check           # exit 1 if the committed files differ from what the build makes
    python notebooks/build.py --autograder OUT  # for a course: OUT/NN_name/ with the hand-out and the autograder zip

Each source becomes an Otter-Grader master notebook (Otter's notebook format v1: ``# ASSIGNMENT CONFIG``,
``# BEGIN QUESTION`` ... raw cells), and ``otter assign`` makes the student notebook and the tests from it:

* ``exercises/NN_name.ipynb`` is Otter's student notebook; ``exercises/tests/`` its public tests
  (``grader.check("q1_3")`` runs them, and prints the hints of ``cgcnn_lab.course.homework``'s checks);
* ``solutions/NN_name.ipynb`` is the same notebook with the answers in; ``solutions/tests/`` holds the public
  and the hidden tests (the autograder's);
* ``--autograder OUT`` writes, per notebook, ``OUT/NN_name/NN_name-autograder.zip`` (grade with ``otter run`` or
  ``notebooks/grade.py``), ``student/`` (hand it out), ``solution/`` and ``master/`` (the generated master).

Markers in the source:

* code: the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` are the solution. The exercise replaces
  them with ``# TODO: <text after "BEGIN SOLUTION:">``, the block's ``# Hint:`` comment lines, and
  ``raise NotImplementedError``. A line ending in ``# SOLUTION`` alone becomes ``name = ...  # TODO``.
  (The master spells these as Otter prompts and ``BEGIN SOLUTION NO PROMPT`` blocks; the build checks that
  ``otter assign`` strips every cell to exactly that exercise.)
* ``# %% [markdown] question="q1_3" points=2`` opens a question at that markdown cell. An auto-graded question
  holds the code cells with solution blocks that follow, then its test cells; a written question (graded by
  hand) ends with its model answer.
* ``# %% tags=["test"]`` is a public test of the open question, ``tags=["test", "hidden"]`` a hidden one: one
  function whose arguments are names from the notebook (Otter's exception-based format). A test fails by
  raising; the question's points are shared between its tests.
* a markdown cell tagged ``solution`` (``# %% [markdown] tags=["solution"]``) is a model answer; the exercise
  has a "Your answer:" cell in its place.

The output has no outputs, no execution counts, fixed cell ids and sorted keys: the same source always gives
the same bytes, so ``--check`` can compare files exactly.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
SRC, SOLUTIONS, EXERCISES = HERE / "src", HERE / "solutions", HERE / "exercises"
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION:?\s*(.*)$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
HINT = re.compile(r"^\s*# Hint:")
INLINE = re.compile(r"^(\s*[\w\[\]., ]+=\s*).*#\s*SOLUTION\s*$")
QUESTION_NAME = re.compile(r"^q\d+_\w+$")
ANSWER_CELL = "**Your answer:**\n\n*(write your answer here)*"
MODEL_ANSWER = "**Model answer.** "
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "# SOLUTION")
KEY = "cgcnn_lab"  # cell metadata linking otter's output cells back to the source, removed from the output
ASSIGNMENT_CONFIG = """# ASSIGNMENT CONFIG
name: {name}
init_cell: false  # the source's import cell makes `grader` (after the Colab install cell)
check_all_cell: false
export_cell: false  # students hand in the .ipynb
run_tests: false  # tests/test_autograder.py grades every solution notebook instead
tests:
  files: true  # tests/qN_x.py next to the notebook: works in Jupyter and, uploaded, on Colab
  ok_format: false  # exception-based: a failing check raises HomeworkCheckError, whose message is the hint
generate: true"""


def _segments(source: str) -> list[tuple]:
    """One code cell as ("line", text), ("block", indent, todo, lines) and ("inline", prefix, solution) parts."""
    parts: list[tuple] = []
    block: list[str] | None = None
    indent, todo = "", ""
    for line in source.splitlines():
        if block is None and (m := BEGIN.match(line)):
            block, indent, todo = [], m.group(1), m.group(2).strip() or "your code here"
        elif block is not None and END.match(line):
            parts.append(("block", indent, todo, block))
            block = None
        elif block is not None:
            block.append(line)
        elif m := INLINE.match(line):
            parts.append(("inline", m.group(1), re.sub(r"\s*#\s*SOLUTION\s*$", "", line)))
        else:
            parts.append(("line", line))
    if block is not None:
        raise ValueError(f"BEGIN SOLUTION without END SOLUTION in:\n{source[:300]}")
    return parts


def _prompt(part: tuple) -> list[str]:
    """What the exercise shows in place of one solution block or inline solution."""
    if part[0] == "inline":
        return [f"{part[1]}...  # TODO"]
    _, indent, todo, block = part
    return [f"{indent}# TODO: {todo}", *(h for h in block if HINT.match(h)), f"{indent}raise NotImplementedError"]


def split_code(source: str) -> tuple[str, str, int]:
    """(solution code, exercise code, number of TODO blocks) of one code cell."""
    sol, ex, todos = [], [], 0
    for part in _segments(source):
        if part[0] == "line":
            sol.append(part[1])
            ex.append(part[1])
            continue
        sol.extend(part[3] if part[0] == "block" else [part[2]])
        ex.extend(_prompt(part))
        todos += 1
    return "\n".join(sol), "\n".join(ex), todos


def otter_code(source: str) -> str:
    """The cell in Otter's syntax: each solution becomes an Otter prompt (the exercise's lines, inside a string that
    the solution ignores) and a ``BEGIN SOLUTION NO PROMPT`` block, so ``otter assign`` strips it to split_code's
    exercise."""
    out = []
    for part in _segments(source):
        if part[0] == "line":
            out.append(part[1])
            continue
        indent = re.match(r"\s*", part[1]).group(0)
        out += [f'{indent}r""" # BEGIN PROMPT', *_prompt(part), f'{indent}""" # END PROMPT']
        if part[0] == "block":
            out += [f"{indent}# BEGIN SOLUTION NO PROMPT", *part[3], f"{indent}# END SOLUTION"]
        else:
            out.append(f"{part[2]}  # SOLUTION NO PROMPT")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- master


@dataclass
class Question:
    """One question of a notebook, as the source declares it (otter's BEGIN QUESTION config)."""

    name: str
    points: float
    manual: bool = False
    tests: list[bool] = field(default_factory=list)  # hidden?, per test
    answers: int = 0  # solution cells (code) or model answers (markdown)


def _raw(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_raw_cell(text)


def _cell(kind: str, text: str, link: dict | None = None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(text) if kind == "code" else nbformat.v4.new_markdown_cell(text)
    if link is not None:
        cell.metadata[KEY] = link
    return cell


def _is_written(cells: list, k: int) -> bool:
    """Whether the question opened at cell k is a written one: a model answer comes before any code answer."""
    for cell in cells[k + 1:]:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "markdown" and "question" in cell.metadata:
            return False
        if cell.cell_type == "markdown" and "solution" in tags:
            return True
        if cell.cell_type == "code" and ("test" in tags or split_code(cell.source)[2]):
            return False
    return False


def master(src: Path) -> tuple[nbformat.NotebookNode, list[Question], list]:
    """Otter's master notebook for one source, its questions, and the source's cells (for the solutions)."""
    cells = jupytext.reads(src.read_text(encoding="utf-8"), fmt="py:percent").cells
    out = [_raw(ASSIGNMENT_CONFIG.format(name=src.stem))]
    questions: list[Question] = []
    open_q: Question | None = None

    def where(k: int) -> str:
        return f"{src.name}, cell {k} ({(cells[k].source.strip().splitlines() or [''])[0][:60]!r})"

    def close(k: int) -> None:
        nonlocal open_q
        if open_q is None:
            return
        if open_q.manual and open_q.answers != 1:
            raise ValueError(f"{where(k)}: written question {open_q.name} needs one model answer (a markdown "
                             'cell tagged "solution")')
        if not open_q.manual and (not open_q.answers or not any(not h for h in open_q.tests)):
            raise ValueError(f"{where(k)}: question {open_q.name} needs a code cell with a solution block and at "
                             'least one public test (# %% tags=["test"])')
        if open_q.tests:
            out.append(_raw("# END TESTS"))
        out.append(_raw("# END QUESTION"))
        open_q = None

    grader_line = "grader = otter.Notebook()"  # no file name: a renamed submission still grades
    if not any(grader_line in c.source for c in cells if c.cell_type == "code"):
        raise ValueError(f"{src.name}: the import cell must create the grader: {grader_line}")
    for k, cell in enumerate(cells):
        meta, tags = cell.metadata, list(cell.metadata.get("tags", []))
        is_test = cell.cell_type == "code" and "test" in tags
        if open_q is not None and open_q.tests and not is_test:
            close(k)
        if cell.cell_type == "markdown" and "question" in meta:
            close(k)
            name, points = str(meta["question"]), meta.get("points")
            if not QUESTION_NAME.match(name) or not isinstance(points, (int, float)) or points <= 0:
                raise ValueError(f'{where(k)}: a question needs question="qN_x" and points > 0, got {dict(meta)}')
            if any(q.name == name for q in questions):
                raise ValueError(f"{where(k)}: question {name} is defined twice")
            manual = _is_written(cells, k)
            open_q = Question(name, points, manual)
            questions.append(open_q)
            config = f"# BEGIN QUESTION\nname: {name}\npoints: {points}" + ("\nmanual: true" if manual else "")
            out += [_raw(config), _cell("markdown", cell.source)]
        elif is_test:
            if open_q is None or open_q.manual:
                raise ValueError(f"{where(k)}: a test cell belongs right after an auto-graded question's answer")
            if not open_q.tests:
                out.append(_raw("# BEGIN TESTS"))
            hidden = "hidden" in tags
            open_q.tests.append(hidden)
            config = f'""" # BEGIN TEST CONFIG\nhidden: {str(hidden).lower()}\n""" # END TEST CONFIG\n'
            out.append(_cell("code", config + cell.source))
        elif cell.cell_type == "markdown" and "solution" in tags:
            if open_q is None or not open_q.manual:
                raise ValueError(f'{where(k)}: a model answer belongs to a written question: put question="qN_wK" '
                                 "points=... on the markdown cell that asks it")
            open_q.answers += 1
            out += [_raw("# BEGIN PROMPT"), _cell("markdown", ANSWER_CELL, {"answer": k}), _raw("# END PROMPT"),
                    _raw("# BEGIN SOLUTION"), _cell("markdown", MODEL_ANSWER + cell.source), _raw("# END SOLUTION")]
            close(k)
        elif cell.cell_type == "code" and split_code(cell.source)[2]:
            if open_q is None or open_q.manual:
                raise ValueError(f'{where(k)}: a solution block must be the answer of a question: put question='
                                 '"qN_x" points=... on the markdown cell of the exercise')
            open_q.answers += 1
            out += [_raw("# BEGIN SOLUTION"), _cell("code", otter_code(cell.source), {"code": k}),
                    _raw("# END SOLUTION")]
        elif cell.cell_type in ("markdown", "code"):
            out.append(_cell(cell.cell_type, cell.source))
        else:
            out.append(_raw(cell.source))
    close(len(cells) - 1)
    if not any(not q.manual for q in questions):
        raise ValueError(f"{src.name}: no auto-graded question, so there is nothing for the autograder to grade")
    nb = nbformat.v4.new_notebook(cells=out)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb, questions, cells


# ----------------------------------------------------------------------------------------------- otter assign


@dataclass
class Built:
    """One notebook's build: the committed files' text and otter's outputs in a temporary folder."""

    stem: str
    exercise: str
    solution: str
    public_tests: dict[str, str]  # file name -> text
    all_tests: dict[str, str]
    questions: list[Question]
    master: str
    zip_path: Path


def _assign(nb: nbformat.NotebookNode, stem: str, work: Path) -> Path:
    """Run ``otter assign`` on the master notebook; returns its result folder (autograder/ and student/)."""
    try:
        from otter.assign import main as otter_assign
    except ImportError as err:
        raise SystemExit(f"notebooks/build.py runs `otter assign`: pip install -e '.[course]' (or '.[test]') ({err})")

    master_path = work / "master" / f"{stem}.ipynb"
    master_path.parent.mkdir(parents=True)
    nbformat.write(nb, master_path)
    otter_assign(str(master_path), str(work / "result"), no_pdfs=True, no_run_tests=True)
    return work / "result"


def _dump(nb: nbformat.NotebookNode, stem: str) -> str:
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"{stem}-{k:03d}"
        cell.metadata.pop(KEY, None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    return nbformat.writes(nb, version=4) + "\n"


def build(src: Path, work: Path) -> Built:
    """Master notebook -> otter assign -> the exercise (otter's student notebook) and the solution (the same
    notebook with the source's answers), plus the tests."""
    nb, questions, cells = master(src)
    result = _assign(nb, src.stem, work)
    student = nbformat.read(result / "student" / f"{src.stem}.ipynb", as_version=4)
    solution = nbformat.from_dict(student)
    solution.cells = []
    for cell in student.cells:
        link = cell.metadata.get(KEY, {})
        filled = nbformat.from_dict(cell)
        if "code" in link:
            sol, ex, _ = split_code(cells[link["code"]].source)
            if cell.source != ex:
                raise RuntimeError(
                    f"otter assign stripped cell {link['code']} of {src.name} differently from the source's "
                    f"markers (a new Otter version?):\n--- otter:\n{cell.source}\n--- expected:\n{ex}"
                )
            filled.source = sol
        elif "answer" in link:
            filled.source = MODEL_ANSWER + cells[link["answer"]].source
        solution.cells.append(filled)

    def tests(folder: Path) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.py"))}

    zips = list((result / "autograder").glob(f"{src.stem}-autograder_*.zip"))
    if len(zips) != 1:
        raise RuntimeError(f"otter assign wrote {len(zips)} autograder zips for {src.name}, expected 1")
    return Built(
        src.stem,
        _dump(student, src.stem),
        _dump(solution, src.stem),
        tests(result / "student" / "tests"),
        tests(result / "autograder" / "tests"),
        questions,
        nbformat.writes(nb, version=4) + "\n",
        zips[0],
    )


def sources() -> list[Path]:
    return sorted(SRC.glob("[0-9][0-9]_*.py"))


def build_all(work: Path) -> list[Built]:
    built = [build(src, work / src.stem) for src in sources()]
    seen: dict[str, str] = {}
    for b in built:  # exercises/tests/ is shared by the notebooks
        for q in b.questions:
            if q.name in seen:
                raise ValueError(f"question {q.name} is in {seen[q.name]} and {b.stem}: names must be unique")
            seen[q.name] = b.stem
    return built


def targets(built: list[Built]) -> dict[Path, str]:
    """Every committed file the build writes, with its content."""
    files: dict[Path, str] = {}
    for b in built:
        files[SOLUTIONS / f"{b.stem}.ipynb"] = b.solution
        files[EXERCISES / f"{b.stem}.ipynb"] = b.exercise
        files.update({EXERCISES / "tests" / name: text for name, text in b.public_tests.items()})
        files.update({SOLUTIONS / "tests" / name: text for name, text in b.all_tests.items()})
    return files


def _generated(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.ipynb")) + sorted((folder / "tests").glob("*.py"))


def stale(files: dict[Path, str]) -> list[str]:
    """What differs between the committed files and the build."""
    problems = []
    for path, text in files.items():
        if not path.exists():
            problems.append(f"{path.relative_to(HERE)}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path.relative_to(HERE)}: differs from its source (edited by hand, or not rebuilt)")
    for folder in (SOLUTIONS, EXERCISES):
        for path in _generated(folder):
            if path not in files:
                problems.append(f"{path.relative_to(HERE)}: has no source in notebooks/src/")
    return problems


def write_autograders(built: list[Built], out: Path) -> None:
    """OUT/NN_name/: the autograder zip, the student hand-out, the solution and the master notebook."""
    for b in built:
        folder = out / b.stem
        if folder.exists():
            shutil.rmtree(folder)
        for sub, notebook, tests in (("student", b.exercise, b.public_tests), ("solution", b.solution, b.all_tests)):
            (folder / sub / "tests").mkdir(parents=True)
            (folder / sub / f"{b.stem}.ipynb").write_text(notebook, encoding="utf-8")
            for name, text in tests.items():
                (folder / sub / "tests" / name).write_text(text, encoding="utf-8")
        (folder / "master").mkdir()
        (folder / "master" / f"{b.stem}.ipynb").write_text(b.master, encoding="utf-8")
        shutil.copyfile(b.zip_path, folder / f"{b.stem}-autograder.zip")
        auto = sum(q.points for q in b.questions if not q.manual)
        manual = sum(q.points for q in b.questions if q.manual)
        print(f"wrote {folder}/: {b.stem}-autograder.zip ({auto:g} auto-graded points; {manual:g} more for the "
              "written questions, graded by hand), student/, solution/, master/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the committed notebooks; write nothing")
    parser.add_argument("--autograder", metavar="OUT", type=Path,
                        help="write OUT/NN_name/ (autograder zip, student hand-out, solution, master) for every "
                        "notebook, and leave notebooks/ as it is")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cgcnn-otter-") as tmp:
        built = build_all(Path(tmp))
        files = targets(built)
        problems = stale(files)
        if args.autograder:
            write_autograders(built, args.autograder)
            if problems:
                print("note: the committed notebooks are out of date (run `python notebooks/build.py`); OUT has the "
                      "current source's")
            return 0
    if args.check:
        if problems:
            print("notebooks out of date; run `python notebooks/build.py`:\n  " + "\n  ".join(problems))
            return 1
        print(f"{len(files)} files up to date")
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE)}")
    for folder in (SOLUTIONS, EXERCISES):
        for path in _generated(folder):
            if path not in files:
                path.unlink()
                print(f"removed {path.relative_to(HERE)} (no source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
