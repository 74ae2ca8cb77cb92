"""Build the homework notebooks from their single source, ``notebooks/src/NN_name.py`` (jupytext percent format).

    python notebooks/build.py           # write notebooks/solutions/*.ipynb and notebooks/exercises/*.ipynb
    python notebooks/build.py --check   # exit 1 if the committed notebooks differ from what the build makes

Markers in the source:

* code: the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` are the solution. The exercise replaces
  them with ``# TODO: <text after "BEGIN SOLUTION:">``, the block's ``# Hint:`` comment lines, and
  ``raise NotImplementedError``. A line ending in ``# SOLUTION`` alone is replaced by ``... = None  # TODO``
  style: ``name = <solution>  # SOLUTION`` becomes ``name = ...  # TODO``.
* markdown: a cell tagged ``solution`` (``# %% [markdown] tags=["solution"]``) is a model answer; the exercise
  has a "Your answer:" cell in its place.

The output has no outputs, no execution counts, fixed cell ids and sorted keys: the same source always gives
the same bytes, so ``--check`` can compare files exactly.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
SRC, SOLUTIONS, EXERCISES = HERE / "src", HERE / "solutions", HERE / "exercises"
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION:?\s*(.*)$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
HINT = re.compile(r"^\s*# Hint:")
INLINE = re.compile(r"^(\s*[\w\[\]., ]+=\s*).*#\s*SOLUTION\s*$")
ANSWER_CELL = "**Your answer:**\n\n*(write your answer here)*"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "# SOLUTION")


def split_code(source: str) -> tuple[str, str, int]:
    """(solution code, exercise code, number of TODO blocks) of one code cell."""
    sol, ex, todos = [], [], 0
    block: list[str] | None = None
    indent, todo = "", ""
    for line in source.splitlines():
        if block is None and (m := BEGIN.match(line)):
            block, indent, todo = [], m.group(1), m.group(2).strip() or "your code here"
            continue
        if block is not None and END.match(line):
            ex.append(f"{indent}# TODO: {todo}")
            ex.extend(h for h in block if HINT.match(h))
            ex.append(f"{indent}raise NotImplementedError")
            sol.extend(h for h in block)
            block, todos = None, todos + 1
            continue
        if block is not None:
            block.append(line)
            continue
        if m := INLINE.match(line):
            sol.append(re.sub(r"\s*#\s*SOLUTION\s*$", "", line))
            ex.append(f"{m.group(1)}...  # TODO")
            todos += 1
            continue
        sol.append(line)
        ex.append(line)
    if block is not None:
        raise ValueError(f"BEGIN SOLUTION without END SOLUTION in:\n{source[:300]}")
    return "\n".join(sol), "\n".join(ex), todos


def build(src: Path) -> tuple[str, str]:
    """The solution and exercise notebooks of one source file, as JSON text."""
    nb = jupytext.reads(src.read_text(encoding="utf-8"), fmt="py:percent")
    solution = nbformat.v4.new_notebook()
    exercise = nbformat.v4.new_notebook()
    meta = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    solution.metadata, exercise.metadata = dict(meta), dict(meta)
    todos = 0
    for cell in nb.cells:
        tags = list(cell.metadata.get("tags", []))
        text = cell.source
        if cell.cell_type == "markdown":
            if "solution" in tags:
                solution.cells.append(nbformat.v4.new_markdown_cell("**Model answer.** " + text))
                exercise.cells.append(nbformat.v4.new_markdown_cell(ANSWER_CELL))
            else:
                solution.cells.append(nbformat.v4.new_markdown_cell(text))
                exercise.cells.append(nbformat.v4.new_markdown_cell(text))
        elif cell.cell_type == "code":
            sol, ex, n = split_code(text)
            todos += n
            solution.cells.append(nbformat.v4.new_code_cell(sol))
            exercise.cells.append(nbformat.v4.new_code_cell(ex))
        else:
            solution.cells.append(nbformat.v4.new_raw_cell(text))
            exercise.cells.append(nbformat.v4.new_raw_cell(text))
    if todos == 0:
        raise ValueError(f"{src.name}: no solution blocks, so the exercise would equal the solution")
    for out in (solution, exercise):
        for k, cell in enumerate(out.cells):
            cell["id"] = f"{src.stem}-{k:03d}"
        nbformat.validate(out)
    return _dump(solution), _dump(exercise)


def _dump(nb) -> str:
    return nbformat.writes(nb, version=4) + "\n"


def targets() -> dict[Path, str]:
    """Every file the build writes, with its content."""
    files: dict[Path, str] = {}
    for src in sorted(SRC.glob("[0-9][0-9]_*.py")):
        sol, ex = build(src)
        files[SOLUTIONS / f"{src.stem}.ipynb"] = sol
        files[EXERCISES / f"{src.stem}.ipynb"] = ex
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the committed notebooks; write nothing")
    args = parser.parse_args(argv)
    files = targets()
    if args.check:
        problems = []
        for path, text in files.items():
            if not path.exists():
                problems.append(f"{path.relative_to(HERE)}: missing")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(
                    f"{path.relative_to(HERE)}: differs from its source (edited by hand, or not rebuilt)"
                )
        for folder in (SOLUTIONS, EXERCISES):
            for path in sorted(folder.glob("*.ipynb")):
                if path not in files:
                    problems.append(f"{path.relative_to(HERE)}: has no source in notebooks/src/")
        if problems:
            print("notebooks out of date; run `python notebooks/build.py`:\n  " + "\n  ".join(problems))
            return 1
        print(f"{len(files)} notebooks up to date")
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE)}")
    for folder in (SOLUTIONS, EXERCISES):
        for path in sorted(folder.glob("*.ipynb")):
            if path not in files:
                path.unlink()
                print(f"removed {path.relative_to(HERE)} (no source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
