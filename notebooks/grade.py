"""Grade homework submissions on this machine, without Docker: Otter-Grader's autograder (``otter run``'s
``otter.api.grade_submission``) for every submitted notebook, and one CSV of points.

    python notebooks/grade.py OUT/01_crystal_to_graph/01_crystal_to_graph-autograder.zip submissions/ \\
        --csv grades-01.csv --feedback feedback-01/

Every submission (a .ipynb file, or a folder of them) runs top to bottom in a fresh kernel, then the public and
hidden tests run. The notebooks run in fast mode (``CGCNN_HOMEWORK_FAST=1``: small subsets, few epochs; the
tests check the code, not the numbers; ``--full`` turns it off) with the data folder the notebooks use
(``CGCNN_DATA``; unset, the course's ``shared/data`` next to the repository, as the notebooks see it from
``notebooks/exercises/``). The CSV is Otter's (``otter grade``'s ``final_grades.csv``: a first row with the points
of each question, then one row per submission) with one more, empty, column per written question to fill in
by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = (HERE / "exercises" / "../../../shared/data").resolve()  # the notebooks' DATA_DIR, made absolute


def assignment_name(autograder: Path) -> str:
    """The notebook an autograder zip grades (``otter_config.json``'s ``assignment_name``, set by build.py)."""
    try:
        with zipfile.ZipFile(autograder) as zf:
            return json.loads(zf.read("otter_config.json"))["assignment_name"]
    except (KeyError, zipfile.BadZipFile, OSError) as err:
        raise SystemExit(f"{autograder} is not an autograder zip made by notebooks/build.py: {err}") from err


def written_questions(stem: str) -> list:
    """The notebook's questions graded by hand, from its source (they are not in the autograder)."""
    sys.path.insert(0, str(HERE))
    try:
        import build
    finally:
        sys.path.remove(str(HERE))
    src = build.SRC / f"{stem}.py"
    if not src.exists():
        return []
    return [q for q in build.master(src)[1] if q.manual]


def submissions(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
        elif path.suffix == ".ipynb" and path.exists():
            found.append(path)
        else:
            raise SystemExit(f"{path}: not a notebook (.ipynb) or a folder of notebooks")
    if not found:
        raise SystemExit("no submissions (.ipynb) found in " + ", ".join(map(str, paths)))
    names = [p.name for p in found]
    if len(set(names)) < len(names):  # the CSV and the feedback files are keyed by the notebook's name
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SystemExit(f"submissions share a file name ({', '.join(twice)}): name each after its student, "
                         "e.g. alice.ipynb, bob.ipynb")
    return found


def grade(autograder: Path, submission: Path, verbose: bool = False):
    """Otter's grading results for one submission; an autograder failure becomes a zero with its reason."""
    from otter.api import grade_submission
    from otter.test_files import GradingResults

    try:
        results = grade_submission(str(submission), str(autograder), quiet=not verbose)
    except Exception as err:  # noqa: BLE001  one broken submission must not stop the others
        results = GradingResults.without_results(err)
    results.file = submission.name
    return results


def grades_table(results: list, written: list):
    """Otter's final_grades.csv table, plus an empty column per written question (its points in the first row)."""
    from otter.grade.utils import POINTS_POSSIBLE_LABEL, merge_scores_to_df

    table = merge_scores_to_df(results)
    for q in written:
        table[f"{q.name} (by hand)"] = [q.points if f == POINTS_POSSIBLE_LABEL else None for f in table["file"]]
    return table


def setup_environment(data: Path | None, full: bool, threads: int | None) -> Path:
    """The variables the graded kernels inherit: fast mode, the data folder, the thread count."""
    if not full:
        os.environ["CGCNN_HOMEWORK_FAST"] = "1"
    folder = data or Path(os.environ.get("CGCNN_DATA", DEFAULT_DATA))
    folder = folder.expanduser().resolve()
    if not folder.exists():
        print(f"warning: data folder {folder} not found: notebooks 3-5 fall back to generated data and exercise 5.5 "
              "fails; pass --data or set CGCNN_DATA", file=sys.stderr)
    os.environ["CGCNN_DATA"] = str(folder)
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("autograder", type=Path, help="NN_name-autograder.zip from `build.py --autograder OUT`")
    parser.add_argument("submissions", type=Path, nargs="+", help="submitted notebooks, or folders of them")
    parser.add_argument("--csv", type=Path, default=Path("grades.csv"), help="where to write the grades")
    parser.add_argument("--feedback", type=Path, help="also write one text report per submission here")
    parser.add_argument("--data", type=Path, help="the course data folder (default: $CGCNN_DATA, else shared/data)")
    parser.add_argument("--full", action="store_true", help="run the notebooks in full, not in fast mode")
    parser.add_argument("--threads", type=int, help="CPU threads per graded notebook (OMP_NUM_THREADS)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Otter's output while grading")
    args = parser.parse_args(argv)
    stem = assignment_name(args.autograder)
    subs = submissions(args.submissions)
    data = setup_environment(args.data, args.full, args.threads)
    print(f"grading {len(subs)} submission(s) of {stem} ({'full' if args.full else 'fast'} mode, data {data})")
    results = []
    for sub in subs:
        start = time.perf_counter()
        res = grade(args.autograder, sub, args.verbose)
        results.append(res)
        status = f"FAILED: {res.catastrophic_error}" if res.has_catastrophic_failure() else (
            f"{res.total:g} / {res.possible:g} auto-graded points")
        print(f"  {sub.name}: {status} ({time.perf_counter() - start:.0f} s)")
        if args.feedback:
            args.feedback.mkdir(parents=True, exist_ok=True)
            (args.feedback / f"{sub.stem}.txt").write_text(res.summary() + "\n", encoding="utf-8")
    written = written_questions(stem)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    grades_table(results, written).to_csv(args.csv, index=False)
    note = f"; fill in the written questions ({', '.join(q.name for q in written)}) by hand" if written else ""
    print(f"wrote {args.csv}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
