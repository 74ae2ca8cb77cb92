"""Where crystals come from: a CGCNN folder, a table file, pymatgen or ASE objects, or structure files
(POSCAR, extxyz, ASE databases, a folder of them: read in :mod:`cgcnn_lab.data.files`).

Readers only *collect* entries (id, raw structure text, targets) and check what can be checked without
parsing structures: ids, targets, missing files. Parsing and graph building happen later, once, in
:mod:`cgcnn_lab.data.featurize`, so that a cached dataset never re-parses a CIF.

Every problem is recorded with the file/row it came from. By default a bad entry is skipped and counted in
a summary; with ``strict=True`` the first problem raises :class:`DataError`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cgcnn_lab.data.entries import (  # noqa: F401  DataError, Entry, ...: importable from here, as always
    DataError,
    Entry,
    Problem,
    ProblemLog,
    RawDataset,
    check_duplicates,
    is_atoms,
    is_structure,
    parse_failure,
    parse_target,
    problem_kind,
    some,
    summarize_problems,
)

if TYPE_CHECKING:  # pymatgen is imported where structures are parsed: a cached run never pays for it
    from pymatgen.core import Structure

TABLE_SUFFIXES = (".csv", ".csv.gz", ".json", ".json.gz", ".parquet", ".pq")
STRUCTURE_COLUMNS = ("structure", "cif", "structure_json", "atoms")


# ---------------------------------------------------------------- CGCNN folder: id_prop.csv + ID.cif


def _read_id_prop(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank rows as (line number in the file, cells), trailing empty cells (``id,1.0,``) dropped."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    reader = csv.reader(io.StringIO(text))
    rows = []
    for cells in reader:
        cells = [c.strip() for c in cells]
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            rows.append((reader.line_num, cells))
    return rows


def read_cgcnn_folder(folder: str | Path, strict: bool = False, require_targets: bool = True) -> RawDataset:
    """The original CGCNN layout: ``id_prop.csv`` (no header: id, target[, target...]) and ``ID.cif`` files.

    Copes with what real folders contain: CRLF line endings, a missing final newline, a BOM, blank lines,
    an accidental header row, CIFs that no row lists (ignored and counted), rows without a CIF (skipped).
    """
    folder = Path(folder)
    id_prop = folder / "id_prop.csv"
    if not id_prop.is_file():
        raise DataError(f"{folder}: no id_prop.csv (expected the CGCNN layout: id_prop.csv + ID.cif files)")
    rows = _read_id_prop(id_prop)
    if not rows:
        raise DataError(f"{id_prop}: empty file, no crystals listed")
    log = ProblemLog(strict)
    n_targets = max(len(r) for _, r in rows) - 1
    header, second = rows[0][1], (rows[1][1] if len(rows) > 1 else [])
    if n_targets and len(header) > 1 and not _is_number(header[1]) and len(second) > 1 and _is_number(second[1]):
        rows = rows[1:]  # tolerate a header line, which the original format does not have
        target_names = header[1:]
        n_targets = len(target_names)
    else:
        target_names = [f"target{k}" if n_targets > 1 else "target" for k in range(n_targets)]

    cif_names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".cif" and p.is_file())
    listed_ids = list(dict.fromkeys(row[0] for _, row in rows if row[0]))
    without_cif = [i for i in listed_ids if not (folder / f"{i}.cif").is_file()]
    if listed_ids and len(without_cif) == len(listed_ids):  # not one match: say so once, with the folder's names
        raise DataError(_no_cif_matches(folder, without_cif, cif_names))

    entries: list[Entry] = []
    seen: dict[str, str] = {}
    for line_no, row in rows:
        entry_id = row[0]
        where = f"{id_prop} line {line_no} (id {entry_id})"
        if not entry_id:
            log.add(where, entry_id, "missing id: the first column is empty")
            continue
        if entry_id in seen:
            log.add(where, entry_id, f"duplicate id: {entry_id!r} (first seen at line {seen[entry_id]})")
            continue
        seen[entry_id] = str(line_no)
        cif = folder / f"{entry_id}.cif"
        if not cif.is_file():
            log.add(where, entry_id, f"missing structure: no file {cif.name} for id {entry_id!r}")
            continue
        targets = None
        if target_names:
            try:
                cells = row[1:] + [""] * (len(target_names) - len(row) + 1)
                targets = np.array([parse_target(c, where, n) for c, n in zip(cells, target_names)])
            except DataError as err:
                if require_targets:
                    log.add(where, entry_id, str(err).split(": ", 1)[1])
                    continue
        try:
            content = cif.read_bytes().decode("utf-8", errors="strict")
        except UnicodeDecodeError as err:
            log.add(str(cif), entry_id, f"unreadable CIF: not UTF-8 text (binary or wrong encoding; byte {err.start})")
            continue
        entries.append(Entry(entry_id, str(cif), content, targets))

    listed = {row[0] for _, row in rows}
    unlisted = [name for name in cif_names if name[:-4] not in listed]
    notes = []
    if unlisted:
        note = f"{len(unlisted)} CIF file(s) in {folder} are not listed in id_prop.csv and were ignored"
        if without_cif:  # ids without a file next to files without an id: the names probably do not match
            note += (f" ({some(unlisted)}), while {len(without_cif)} id(s) of id_prop.csv have no CIF "
                     f"({some([f'{i}.cif' for i in without_cif])}): do the ids match the file names?")
        notes.append(note)
    atom_init = folder / "atom_init.json"
    return RawDataset(
        name=folder.name,
        entries=entries,
        target_names=target_names if all(e.targets is not None for e in entries) else [],
        problems=log.problems,
        notes=notes,
        atom_init=atom_init if atom_init.is_file() else None,
    )


def _no_cif_matches(folder: Path, without_cif: list[str], cif_names: list[str]) -> str:
    """Two lines: none of the ids has its ID.cif, and what the folder holds instead."""
    head = (f"{folder}: none of the {len(without_cif)} id(s) in id_prop.csv has its CIF file "
            f"(no {some([f'{i}.cif' for i in without_cif])})")
    if not cif_names:
        return f"{head}\n  the folder holds no .cif files: put one ID.cif per id of id_prop.csv next to it"
    by_lower = {name.lower(): name for name in cif_names}
    case = [by_lower[f"{i}.cif".lower()] for i in without_cif if f"{i}.cif".lower() in by_lower]
    if case:
        return (f"{head}\n  {len(case)} of them have a CIF file whose name differs only in upper/lower case "
                f"(e.g. {case[0]}): name each file ID.cif, the id written exactly as in id_prop.csv")
    return (f"{head}\n  the folder holds {len(cif_names)} CIF file(s) under other names ({some(cif_names)}): "
            "each id in id_prop.csv must be the name of its CIF file without .cif")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- tables: CSV / JSON / Parquet


def _flatten_record(record: dict, structure_keys: set[str]) -> dict:
    """One level of nesting becomes 'outer.inner' columns (e.g. bandgap.energy); structures stay whole."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict) and key not in structure_keys:
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _json_frame(path: Path, structure_col: str | None):
    """JSON tables in the shapes people have: a list of records, records keyed by id
    (``{"mp-1": {"structure": ..., "energy": ...}}``), or pandas' column orientation."""
    import gzip

    import pandas as pd

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    structure_keys = set(STRUCTURE_COLUMNS) | ({structure_col} if structure_col else set())
    if isinstance(data, list):
        if not all(isinstance(r, dict) for r in data):
            raise ValueError("a JSON list must hold one object per crystal")
        return pd.DataFrame([_flatten_record(r, structure_keys) for r in data])
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object or list, got {type(data).__name__}")  # noqa: TRY004 (file content)
    if "lattice" in data and "sites" in data:  # one pymatgen Structure (Structure.to("mp-1.json")): a one-row table
        return pd.DataFrame([{"id": path.name.split(".")[0], "structure": json.dumps(data)}])
    if structure_keys & set(data) or not all(isinstance(v, dict) for v in data.values()):
        return pd.DataFrame(data)  # column orientation: {"structure": {...rows}, "target": {...rows}}
    rows = [{"id": str(key), **_flatten_record(value, structure_keys)} for key, value in data.items()]
    return pd.DataFrame(rows)


def _read_frame(path: Path, structure_col: str | None = None):
    import pandas as pd

    name = path.name.lower()
    try:
        if name.endswith((".csv", ".csv.gz")):  # all text: ids keep leading zeros, "" means an empty cell
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        if name.endswith((".json", ".json.gz")):
            return _json_frame(path, structure_col)
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001  pandas raises many types; the user needs file + reason
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise DataError(f"{path}: cannot read table ({type(err).__name__}: {reason})") from None
    raise DataError(f"{path}: unknown table format (expected one of {', '.join(TABLE_SUFFIXES)})")


def read_table(
    path: str | Path,
    targets: Sequence[str] = (),
    id_col: str | None = None,
    structure_col: str | None = None,
    strict: bool = False,
    extra_cols: Sequence[str] = (),
    require_targets: bool = False,
) -> RawDataset:
    """One row per crystal: an id column, a structure column (CIF text or pymatgen JSON/dict), target columns.

    With ``require_targets`` and no ``targets`` the table's numeric columns are offered as ``--target`` choices.
    """
    path = Path(path)
    frame = _read_frame(path, structure_col)
    if len(frame) == 0:
        raise DataError(f"{path}: the table has no rows")
    columns = [str(c) for c in frame.columns]
    if structure_col is None:
        structure_col = next((c for c in STRUCTURE_COLUMNS if c in columns), None)
        if structure_col is None:
            raise DataError(
                f"{path}: no structure column found (looked for {', '.join(STRUCTURE_COLUMNS)}); "
                f"{_structure_col_hint(frame)}; columns are {columns}"
            )
    elif structure_col not in columns:
        raise DataError(f"{path}: no structure column {structure_col!r}; {_structure_col_hint(frame)}; "
                        f"columns are {columns}")
    if id_col is None:
        id_col = next((c for c in ("id", "material_id", "mp_id", "name") if c in columns), None)
    elif id_col not in columns:
        raise DataError(f"{path}: no id column {id_col!r}; columns are {columns}")
    if require_targets and not targets:
        candidates = _numeric_columns(frame, exclude={structure_col, id_col, *extra_cols})
        if not candidates:
            raise DataError(f"{path}: no --target given, and no column holds numbers to learn; columns are {columns}")
        shown = ", ".join(candidates[:12]) + (f", ... ({len(candidates) - 12} more)" if len(candidates) > 12 else "")
        raise DataError(f"{path}: name the target column(s) with --target COL (e.g. --target {candidates[0]}); "
                        f"numeric columns of this table: {shown}")
    missing = [t for t in targets if t not in columns]
    if missing:
        raise DataError(f"{path}: target column(s) {missing} not found; columns are {columns}")
    missing = [c for c in extra_cols if c not in columns]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found; columns are {columns}")

    log = ProblemLog(strict)
    ids = frame[id_col].astype(str).tolist() if id_col else [str(i) for i in frame.index]
    structures = frame[structure_col].tolist()
    target_values = frame[list(targets)].to_numpy(dtype=object, copy=True) if targets else None
    if target_values is not None:
        target_values[frame[list(targets)].isna().to_numpy()] = None  # null / NaN cell of a JSON or Parquet table
    extras = frame[list(extra_cols)].to_dict("records") if extra_cols else None
    id_missing = frame[id_col].isna().to_numpy() if id_col else np.zeros(len(frame), dtype=bool)
    entries: list[Entry] = []
    for row, (entry_id, content) in enumerate(zip(ids, structures)):
        where = f"{path.name} row {row + 1} (id {entry_id})"
        if not entry_id.strip() or id_missing[row]:
            log.add(where, entry_id, f"missing id: column '{id_col}' is empty")
            continue
        if isinstance(content, dict):
            content = json.dumps(content, default=_plain)
        if content is None or (isinstance(content, float) and math.isnan(content)) or (
            isinstance(content, str) and not content.strip()
        ):
            log.add(where, entry_id, f"missing structure: column '{structure_col}' is empty")
            continue
        if not isinstance(content, str) and not is_structure(content):
            log.add(where, entry_id, f"unreadable structure: column '{structure_col}' holds a {type(content).__name__}, "
                    "expected CIF text or a pymatgen Structure as JSON")
            continue
        values = None
        if target_values is not None:
            try:
                values = np.array([parse_target(v, where, t) for v, t in zip(target_values[row], targets)])
            except DataError as err:
                log.add(where, entry_id, str(err).split(": ", 1)[1])
                continue
        entries.append(Entry(entry_id, where, content, values, extras[row] if extras else None))
    entries = check_duplicates(entries, log)
    return RawDataset(name=path.name.split(".")[0], entries=entries, target_names=list(targets), problems=log.problems)


def _looks_like_structure(value: object) -> bool:
    if isinstance(value, dict):
        return "lattice" in value and "sites" in value
    if isinstance(value, str):
        return "_cell_length_a" in value or ("{" in value[:20] and '"lattice"' in value)
    return is_structure(value)


def _structure_col_hint(frame) -> str:
    """``use --structure-col NAME``, naming the columns whose first filled cell holds a structure, if any."""
    columns = [str(c) for c in frame.columns]
    # a JSON structure dict under an unknown name was flattened into NAME.lattice, NAME.sites, ...
    found = [c[: -len(".lattice")] for c in columns if c.endswith(".lattice") and f"{c[:-8]}.sites" in columns]
    for column in frame.columns:
        values = frame[column]
        first = next((v for v in values[:50] if v is not None and not (isinstance(v, str) and not v.strip())), None)
        if first is not None and _looks_like_structure(first):
            found.append(str(column))
    if found:
        return f"column {found[0]!r} holds structures: use --structure-col {found[0]}"
    return "name the column holding CIF text or pymatgen Structure JSON with --structure-col NAME"


def _numeric_columns(frame, exclude: set) -> list[str]:
    """Columns whose every filled cell is a number (candidates for --target); fold columns are not targets."""
    import pandas as pd

    def number(value: object) -> bool:
        if isinstance(value, str):
            return _is_number(value)
        return isinstance(value, (int, float, np.number))

    names = []
    for column in frame.columns:
        name = str(column)
        if name in exclude or "fold" in name.lower():
            continue
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):  # Parquet / JSON numbers (bools count: 0/1 labels)
            if values.notna().any():
                names.append(name)
            continue
        filled = [v for v in values.tolist() if v is not None and not (isinstance(v, str) and not v.strip())]
        if filled and all(number(v) for v in filled) and not all(math.isnan(float(v)) for v in filled):
            names.append(name)
    return names


def _plain(value: object) -> object:
    """JSON for the numpy arrays/scalars a Parquet reader puts inside structure dicts."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---------------------------------------------------------------- Python objects


def from_structures(
    structures: Sequence[Structure],
    targets: Sequence[float] | Sequence[Sequence[float]] | None = None,
    ids: Sequence[str] | None = None,
    target_names: Sequence[str] | None = None,
    strict: bool = False,
) -> RawDataset:
    """pymatgen Structures or ASE ``Atoms`` (with optional targets) as a dataset. ASE frames carry their own
    targets: ``target_names`` without ``targets`` reads them from ``atoms.info`` and the calculator's results."""
    ids = [str(i) for i in ids] if ids is not None else [f"structure-{i}" for i in range(len(structures))]
    if len(ids) != len(structures):
        raise DataError(f"{len(ids)} ids for {len(structures)} structures")
    values = None
    if targets is not None:
        values = np.asarray(targets, dtype=np.float64)
        values = values.reshape(len(structures), -1)
    names = list(target_names) if target_names else (
        [] if values is None else (["target"] if values.shape[1] == 1 else [f"target{k}" for k in range(values.shape[1])])
    )
    log = ProblemLog(strict)
    entries = []
    for i, (entry_id, s) in enumerate(zip(ids, structures)):
        where = f"structure #{i} (id {entry_id})"
        row = None if values is None else values[i]
        if is_atoms(s):  # stored as structure JSON text, as a file's frames are (data/files.py)
            from cgcnn_lab.data.files import atoms_content, frame_properties, frame_targets

            try:
                if values is None and target_names:
                    row = frame_targets(frame_properties(s), names, where)
                s = atoms_content(s)
            except DataError as err:
                log.add(where, entry_id, str(err).removeprefix(f"{where}: "))
                continue
        if row is not None and not np.isfinite(row).all():
            log.add(where, entry_id, f"target is not finite: {row.tolist()}")
            continue
        entries.append(Entry(entry_id, where, s, row))
    entries = check_duplicates(entries, log)
    return RawDataset("structures", entries, names, log.problems)


def load_dataset(
    source: str | Path | Sequence[str | Path],
    targets: Sequence[str] = (),
    id_col: str | None = None,
    structure_col: str | None = None,
    strict: bool = False,
    require_targets: bool = True,
    extra_cols: Sequence[str] = (),
) -> RawDataset:
    """Dispatch on what ``source`` is: a CGCNN folder, a table file, a structure file (POSCAR, extxyz, ASE
    database, ...), a folder of structure files without ``id_prop.csv``, or a list of structure files."""
    from cgcnn_lab.data.files import read_structure_files, read_structure_folder

    if not isinstance(source, (str, Path)):
        paths = [Path(p) for p in source]
        if not paths:
            raise DataError("no data given: name a CGCNN folder, a table or structure files")
        if len(paths) > 1:
            alone = next((p for p in paths if p.is_dir() or p.name.lower().endswith(TABLE_SUFFIXES)), None)
            if alone is not None:
                raise DataError(f"{alone}: a folder or a table is read alone; several sources must all be "
                                "structure files (CIF, POSCAR, extxyz, ...)")
            _files_only(paths[0], structure_col, extra_cols)
            return read_structure_files(paths, targets, id_col, strict, require_targets)
        source = paths[0]
    path = Path(source)
    if path.is_dir() and not (path / "id_prop.csv").is_file():
        _files_only(path, structure_col, extra_cols)
        return read_structure_folder(path, targets, id_col, strict, require_targets)
    if path.is_dir():
        if extra_cols:
            raise DataError(f"{path}: columns {list(extra_cols)} need a table file; a CGCNN folder has only id_prop.csv")
        if targets:
            raise DataError(f"{path}: --target selects table columns; a CGCNN folder's targets come from id_prop.csv")
        return read_cgcnn_folder(path, strict=strict, require_targets=require_targets)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if not path.name.lower().endswith(TABLE_SUFFIXES):
        _files_only(path, structure_col, extra_cols)
        return read_structure_files([path], targets, id_col, strict, require_targets)
    return read_table(path, targets, id_col=id_col, structure_col=structure_col, strict=strict, extra_cols=extra_cols,
                      require_targets=require_targets)


def _files_only(path: Path, structure_col: str | None, extra_cols: Sequence[str]) -> None:
    """Table options given for structure files: say so rather than ignore them."""
    if structure_col:
        raise DataError(f"{path}: --structure-col selects a table column; structure files have none")
    if extra_cols:
        raise DataError(f"{path}: columns {list(extra_cols)} need a table file; structure files have no columns")


# ---------------------------------------------------------------- structure parsing (called when featurising)

MIN_INTERATOMIC_DISTANCE = 0.5  # Å; closer atoms mean a broken file (duplicated sites), not chemistry
MAX_ATOMS = 5000
CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta",
             "_cell_angle_gamma")


def parse_structure(entry: Entry) -> Structure:
    """Parse and sanity-check one entry; raise DataError with the entry's location and the problem."""
    from pymatgen.core import Structure

    if isinstance(entry.content, Structure):
        structure = entry.content
    else:
        text = entry.content.lstrip()
        kind = "unreadable structure JSON" if text.startswith("{") else "unreadable CIF"
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if text.startswith("{"):
                    structure = Structure.from_dict(_plain_structure(json.loads(text)))
                else:
                    structure = Structure.from_str(text, fmt="cif")
        except Exception as err:  # noqa: BLE001  pymatgen raises anything on a broken file
            if not text.startswith("{"):
                missing = [k for k in CELL_KEYS if k not in text]
                if missing and "_atom_site" in text:  # a CIF with atoms but no cell: say so, not "no structures"
                    raise DataError(f"{entry.where}: {kind}: no cell parameters ({', '.join(missing)} missing)") from None
            raise DataError(f"{entry.where}: {kind}: {parse_failure(err, caught)}") from None
    return check_structure(structure, entry.where)


def _plain_structure(d: object) -> object:
    """A Structure dict with only what a crystal graph needs (cell, species, coordinates). Site and structure
    ``properties`` are decoded by monty, which imports whatever module an ``@module`` key names: the data must
    not choose what the program imports (a file from anywhere, an upload to ``cgcnn-lab serve``)."""
    if not isinstance(d, dict):
        return d  # pymatgen says what is wrong with it
    plain = {k: v for k, v in d.items() if k != "properties"}
    if isinstance(d.get("sites"), list):
        plain["sites"] = [{k: v for k, v in site.items() if k != "properties"} if isinstance(site, dict) else site
                          for site in d["sites"]]
    return plain


def check_structure(structure: Structure, where: str) -> Structure:
    """The structure, with every atom wrapped into the cell, if it is a usable crystal; else DataError."""
    if len(structure) == 0:
        raise DataError(f"{where}: empty structure: no atoms")
    if len(structure) > MAX_ATOMS:
        raise DataError(f"{where}: too many atoms: {len(structure)} (the limit is {MAX_ATOMS})")
    if not structure.is_ordered:
        raise DataError(f"{where}: disordered structure (partial occupancy); CGCNN needs one element per site")
    with np.errstate(all="ignore"):  # an impossible cell (NaN lattice) is reported below, not warned about
        volume = structure.lattice.volume
    if not math.isfinite(volume) or volume < 1e-3 * len(structure):
        raise DataError(f"{where}: degenerate lattice (cell volume {volume:.3g} Å^3)")
    if not np.isfinite(structure.frac_coords).all():
        raise DataError(f"{where}: non-finite atomic coordinates")
    from cgcnn_lab.data.graph import search_size_problem, wrap_into_cell

    structure = wrap_into_cell(structure)
    problem = search_size_problem(structure, MIN_INTERATOMIC_DISTANCE)
    if problem:
        raise DataError(f"{where}: {problem}")
    close = structure.get_neighbor_list(MIN_INTERATOMIC_DISTANCE)[3]  # other atoms and periodic images
    if len(close):
        raise DataError(
            f"{where}: overlapping atoms ({float(close.min()):.3f} Å apart, below {MIN_INTERATOMIC_DISTANCE} Å)"
        )
    return structure

