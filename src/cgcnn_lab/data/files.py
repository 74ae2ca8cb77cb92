"""Structure files as data: POSCAR/CONTCAR, CIF, extxyz (every frame, per-frame properties as targets), ASE
databases, anything else ASE or pymatgen reads; several such files; a folder of them without ``id_prop.csv``;
ASE ``Atoms`` from Python.

A CIF stays raw text, as in a CGCNN folder (the fast reader takes it). Everything else is read here once and kept
as the text of a pymatgen Structure JSON holding only the cell, the elements and the fractional coordinates: the
graph cache is keyed by the entries' text (data/featurize.py), so reading the same file again hits the cache, and
per-frame properties (energies, forces) stay out of the key, so a changed target never re-featurises.

ASE is imported only when a file is read (it takes ~1 s): the command line's start and a CGCNN folder never load it.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgcnn_lab.data.entries import (
    DataError,
    Entry,
    ProblemLog,
    RawDataset,
    check_duplicates,
    is_atoms,
    parse_failure,
    parse_target,
    some,
    summarize_problems,
)

# what a folder's files are read as, by suffix (ASE's format names; "cif": raw text; "db": an ASE database)
SUFFIX_FORMATS = {".cif": "cif", ".vasp": "vasp", ".poscar": "vasp", ".xyz": "extxyz", ".extxyz": "extxyz",
                  ".traj": "traj", ".db": "db", ".xsf": "xsf"}
VASP_NAMES = ("poscar", "contcar")  # POSCAR, CONTCAR, POSCAR_mp-1, CONTCAR.relax, ...
GENERIC_STEMS = {"poscar", "contcar", "outcar", "vasprun", "xdatcar", "structure", "geometry"}  # say nothing alone
KINDS = {"vasp": "POSCAR", "extxyz": "extxyz", "traj": "ASE trajectory", "db": "ASE database"}
KNOWN = "CIF, POSCAR/CONTCAR/.vasp, .xyz/.extxyz, ASE .traj/.db, or any structure file ASE or pymatgen reads"


def file_format(path: Path) -> str | None:
    """The format of a structure file by its name (None: not one a folder is read for)."""
    name = path.name.lower()
    if name.startswith(VASP_NAMES):
        return "vasp"
    return SUFFIX_FORMATS.get(path.suffix.lower())


def structure_json(symbols: Sequence[str], matrix: np.ndarray, frac: np.ndarray) -> str:
    """A pymatgen Structure's JSON with nothing but the cell, elements and fractional coordinates (built without
    importing pymatgen: ``Structure.from_dict`` reads it when the graph is built)."""
    sites = [{"species": [{"element": s, "occu": 1}], "abc": abc} for s, abc in zip(symbols, frac.tolist())]
    return json.dumps({"@module": "pymatgen.core.structure", "@class": "Structure",
                       "lattice": {"matrix": np.asarray(matrix, dtype=float).tolist()}, "sites": sites})


def atoms_content(atoms) -> str:
    """An ASE ``Atoms`` as entry content (structure JSON); DataError ("kind: detail", no location) if it is no
    periodic crystal: CGCNN's graph needs a cell to find neighbours in."""
    pbc, rank = np.asarray(atoms.pbc, dtype=bool), atoms.cell.rank
    if not pbc.any():
        detail = "no cell (no Lattice in an xyz file)" if rank == 0 else "pbc is off in every direction"
        raise DataError(f"no periodic cell: {detail}: a molecule? CGCNN needs a periodic crystal")
    if rank < 3:
        raise DataError(f"no periodic cell: the cell has {rank} lattice vector(s); CGCNN needs a 3D periodic crystal")
    numbers = atoms.numbers
    if len(numbers) == 0:
        raise DataError("empty structure: no atoms")
    if (numbers < 1).any():
        raise DataError(f"unknown element: {int((numbers < 1).sum())} atom(s) of atomic number 0 (X, a dummy atom)")
    return structure_json(atoms.get_chemical_symbols(), atoms.cell.array, atoms.cell.scaled_positions(atoms.positions))


def _structure_content(structure) -> str:
    """A pymatgen Structure read from a file as entry content (its sites' properties, e.g. magnetic moments, left
    out: they are no part of the graph)."""
    if not structure.is_ordered:  # keep the occupancies: parse_structure names the disorder when featurising
        return json.dumps({**structure.as_dict(), "properties": {}}, default=str)
    symbols = [site.specie.symbol for site in structure]
    return structure_json(symbols, structure.lattice.matrix, structure.frac_coords)


def frame_properties(atoms) -> dict:
    """What a frame says about itself: ``atoms.info`` and the calculator's results (extxyz puts ``energy``,
    ``stress``... there), the info winning."""
    calc = getattr(atoms, "calc", None)
    results = dict(getattr(calc, "results", None) or {})
    return {**results, **atoms.info}


def _is_scalar_number(value: object) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "biuf"
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (complex, np.complexfloating))


def numeric_properties(frames: Sequence[dict]) -> list[str]:
    """Names of the numeric scalar properties of ``frames``, in order of appearance: the ``--target`` choices."""
    names: dict[str, None] = {}
    for props in frames:
        names.update((k, None) for k, v in props.items() if _is_scalar_number(v))
    return list(names)


def frame_targets(props: dict, names: Sequence[str], where: str) -> np.ndarray:
    """The values of properties ``names`` of one frame; DataError naming the frame and what it holds instead."""
    missing = [n for n in names if n not in props]
    if missing:
        held = ", ".join(numeric_properties([props]))
        raise DataError(f"{where}: missing target {missing[0]!r}: no such property here "
                        f"({'numeric properties: ' + held if held else 'it has no numeric properties'})")
    return np.array([parse_target(props[n], where, n) for n in names])


@dataclass(slots=True)
class _Frame:
    """One structure read from a file, before it is checked: where it came from, its id, an ASE ``Atoms``, a
    pymatgen Structure or CIF text, its properties; or, for a frame that could not be read, the error."""

    where: str
    id: str
    obj: object
    props: dict
    error: str = ""


def _stem(path: Path) -> str:
    """A file's id: its name without extension (POSCAR_mp-1 whole); ``calc1/POSCAR`` for names that say nothing
    alone, so that the CONTCARs of several calculations keep apart."""
    stem = path.name if path.name.lower().startswith(VASP_NAMES) else path.stem
    return f"{path.parent.name}/{stem}" if stem.lower() in GENERIC_STEMS and path.parent.name else stem


def _read_cif(path: Path) -> list[_Frame]:
    try:
        return [_Frame(str(path), _stem(path), path.read_bytes().decode("utf-8"), {})]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: unreadable CIF: not UTF-8 text (binary or wrong encoding; byte {err.start})") from None


def _read_db(path: Path) -> list[_Frame]:
    """An ASE database's rows: key-value pairs and stored calculator results are each row's properties."""
    try:  # opened read-only first: ASE would add its tables to any other SQLite file it is given
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as err:
        raise DataError(f"{path}: unreadable ASE database: {err}") from None
    if "systems" not in tables:
        raise DataError(f"{path}: unreadable ASE database: an SQLite file without ASE's tables")
    import ase.db

    frames = []
    try:
        for row in ase.db.connect(str(path), type="db").select():
            atoms = row.toatoms()
            frames.append(_Frame(f"{path} row id {row.id}", f"{_stem(path)}-{row.id}", atoms,
                                 {**frame_properties(atoms), **row.key_value_pairs}))
    except Exception as err:  # noqa: BLE001  sqlite/ASE raise many types for a damaged file
        raise DataError(f"{path}: unreadable ASE database: {parse_failure(err, [])}") from None
    if not frames:
        raise DataError(f"{path}: empty ASE database: no rows")
    return frames


def _read_ase(path: Path, fmt: str | None) -> list[_Frame]:
    """Every frame ASE reads from ``path`` (the format by name, else ASE's guess, else pymatgen's reader).

    A frame that cannot be read ends the file: the frames before it are kept and the problem names the frame."""
    import ase.io
    from ase.io.formats import filetype, ioformats

    if fmt is None:
        try:
            fmt = filetype(str(path))
        except Exception:  # noqa: BLE001  an empty or unreadable file: pymatgen's reader says why below
            fmt = None
        if fmt not in ioformats or not ioformats[fmt].can_read:
            return _read_pymatgen(path)
    kind = KINDS.get(fmt, f"{fmt} file")
    frames: list[_Frame] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for k, atoms in enumerate(ase.io.iread(str(path), index=":", format=fmt)):
                frames.append(_Frame(f"{path} frame {k}", "", atoms, frame_properties(atoms)))
    except Exception as err:  # noqa: BLE001  ASE raises anything on a broken file
        reason = parse_failure(err, caught)
        if not frames:
            raise DataError(f"{path}: unreadable {kind}: {reason}") from None
        frames.append(_Frame(f"{path} frame {len(frames)}", "", None, {}, f"unreadable {kind}: {reason} (the frames "
                                                                         "before it were read, the rest was not)"))
    if not frames:
        raise DataError(f"{path}: unreadable {kind}: no structure in the file (empty?)")
    stem = _stem(path)
    for k, frame in enumerate(frames):
        frame.id = stem if len(frames) == 1 else f"{stem}-{k}"
    if len(frames) == 1:  # a file of one structure is named as a file, not as frame 0
        frames[0].where = str(path)
    return frames


def _read_pymatgen(path: Path) -> list[_Frame]:
    """A format ASE does not know, read by pymatgen (``Structure.from_file``), or a DataError saying neither can."""
    from pymatgen.core import Structure

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            structure = Structure.from_file(str(path))
    except Exception as err:  # noqa: BLE001  pymatgen raises anything on a broken file
        if "unrecognized extension" in str(err).lower():
            raise DataError(f"{path}: not a format cgcnn-lab reads: expected a CGCNN folder, a table (.csv, .csv.gz, "
                            f".json, .parquet) or a structure file ({KNOWN})") from None
        raise DataError(f"{path}: unreadable structure file: {parse_failure(err, caught)}") from None
    return [_Frame(str(path), _stem(path), structure, {})]


def _read_file(path: Path) -> list[_Frame]:
    """The structures of one file, as frames (a CIF: its text)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    fmt = file_format(path)
    if fmt == "cif":
        return _read_cif(path)
    if fmt == "db":
        return _read_db(path)
    return _read_ase(path, fmt)


def _content(frame: _Frame) -> str:
    """Entry content of a frame read without problems; DataError ("kind: detail") if it is no crystal."""
    if isinstance(frame.obj, str):
        return frame.obj
    if is_atoms(frame.obj):
        return atoms_content(frame.obj)
    return _structure_content(frame.obj)


def read_structure_files(
    paths: Sequence[str | Path],
    targets: Sequence[str] = (),
    id_col: str | None = None,
    strict: bool = False,
    require_targets: bool = False,
    name: str | None = None,
    source: str | None = None,
    notes: Sequence[str] = (),
    atom_init: Path | None = None,
) -> RawDataset:
    """Every structure of ``paths`` (one file, several, or a folder's), ids from the file names (``stem-k`` for
    frame k of a file of several, ``stem-ROWID`` for a database row) or from the property ``id_col``; targets from
    the frames' properties named in ``targets``.

    A bad file or frame is skipped and counted (strict: DataError); when nothing could be read, the problem is the
    error: a single broken POSCAR says what is wrong with it.
    """
    paths = [Path(p) for p in paths]
    targets = list(targets)
    name = name or (paths[0].stem if len(paths) == 1 else f"{len(paths)} files")
    source = source or (str(paths[0]) if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more file(s)")
    log = ProblemLog(strict)
    frames: list[_Frame] = []
    for path in paths:
        try:
            frames += _read_file(path)
        except DataError as err:
            if len(paths) == 1:
                raise
            log.add(str(path), _stem(path), str(err).removeprefix(f"{path}: "))
    readable = [f.props for f in frames if not f.error]
    if frames and not targets and require_targets:
        candidates = numeric_properties(readable)
        if candidates:
            raise DataError(f"{source}: name the target(s) with --target NAME (e.g. --target {candidates[0]}); "
                            f"numeric per-frame properties: {some(candidates, 12)}")
        raise DataError(f"{source}: no targets to train on: structure files carry none (--target NAME reads per-frame "
                        "properties of extxyz files and ASE databases). Give the targets in id_prop.csv next to the "
                        "CIFs (ID,target per line) or in a table; `cgcnn-lab predict` reads these files as they are")
    for target in targets:  # a name that no frame has is a typo or the wrong file: one error, not one per frame
        if readable and not any(target in p for p in readable):
            held = numeric_properties(readable)
            raise DataError(f"{source}: no structure has the property {target!r} (--target NAME reads per-frame "
                            "properties of extxyz files and ASE databases); "
                            + (f"numeric properties: {some(held, 12)}" if held else "these files carry none"))

    entries: list[Entry] = []
    for frame in frames:
        entry_id = frame.id
        try:
            if frame.error:
                raise DataError(frame.error)
            if id_col:
                if id_col not in frame.props:
                    raise DataError(f"missing id: the frame has no property {id_col!r}")
                entry_id = str(frame.props[id_col])
            content = _content(frame)
            values = frame_targets(frame.props, targets, frame.where) if targets else None
        except DataError as err:
            log.add(frame.where, entry_id, str(err).removeprefix(f"{frame.where}: "))
            continue
        entries.append(Entry(entry_id, frame.where, content, values))
    entries = check_duplicates(entries, log)
    if not entries:
        if len(log.problems) == 1:
            raise DataError(str(log.problems[0]))
        raise DataError(f"{source}: no usable structures\n{summarize_problems(log.problems)}")
    return RawDataset(name, entries, targets, log.problems, list(notes), atom_init)


def read_structure_folder(
    folder: str | Path, targets: Sequence[str] = (), id_col: str | None = None, strict: bool = False,
    require_targets: bool = False,
) -> RawDataset:
    """A folder of structure files without ``id_prop.csv`` (ids: the file names without extension). Files that
    are not structures by their name are ignored and named in a note; an ``atom_init.json`` is the encoding."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    atom_init = folder / "atom_init.json"
    structures = [p for p in files if file_format(p)]
    others = [p.name for p in files if not file_format(p)]
    ignored = [name for name in others if name != atom_init.name]
    if not structures:
        held = f"none of its {len(others)} file(s) ({some(others)}) is one by its name" if others else "it is empty"
        raise DataError(f"{folder}: no id_prop.csv and no structure files ({held}); expected the CGCNN layout "
                        f"(id_prop.csv + ID.cif) or structure files ({KNOWN})")
    notes = [(f"{len(ignored)} file(s) in {folder} are not structure files by their name and were ignored "
              f"({some(ignored)})")] if ignored else []
    return read_structure_files(structures, targets, id_col, strict, require_targets, name=folder.resolve().name,
                                source=str(folder), notes=notes, atom_init=atom_init if atom_init.is_file() else None)
