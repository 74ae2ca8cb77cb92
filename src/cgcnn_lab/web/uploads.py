"""Uploaded files -> a ``RawDataset``, read as ``cgcnn-lab predict`` reads files, inside a temporary folder.

Every check of a request's size happens here, before any structure is featurised, and no message or id shows the
temporary folder (files are saved under a safe version of their name: ``my file.cif`` as ``my_file.cif``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cgcnn_lab.data.fastcif import read_plain_cif
from cgcnn_lab.data.files import file_format, read_structure_files
from cgcnn_lab.data.sources import TABLE_SUFFIXES, DataError, Entry, RawDataset, parse_structure
from cgcnn_lab.web.limits import ACCEPTED, FORMATS, Limits, megabytes


class UploadError(ValueError):
    """A request the server refuses as a whole (too large, too many structures, a format it does not read);
    ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """One uploaded file: the name the user gave and its content (a stream, read once)."""

    name: str
    stream: BinaryIO


def safe_name(name: str, taken: set[str]) -> str:
    """A file name for the temporary folder: the last part of the uploaded name, letters, digits and ``._+-``
    only (no path, no hidden file), made unique; the name keeps its suffix, which says its format."""
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", Path(name.replace("\\", "/")).name).lstrip(".") or "upload"
    stem, suffix = (base[: -len(Path(base).suffix)], Path(base).suffix) if Path(base).suffix else (base, "")
    candidate, k = base, 2
    while candidate.lower() in taken:
        candidate, k = f"{stem}-{k}{suffix}", k + 1
    taken.add(candidate.lower())
    return candidate


def save_uploads(uploads: Sequence[Upload], folder: Path, limits: Limits) -> list[Path]:
    """Write the uploads into ``folder``, refusing the request if a file is too large, of a format this server
    does not read, or if there are too many."""
    if not uploads:
        raise UploadError(f"no files: upload one or more structure files ({ACCEPTED})")
    if len(uploads) > limits.structures:
        raise UploadError(f"{len(uploads)} files: this server takes at most {limits.structures} structures per "
                          "request; split them over several requests", 413)
    paths, taken = [], set()
    for upload in uploads:
        path = folder / safe_name(upload.name or "upload", taken)
        if file_format(path) not in FORMATS or path.name.lower().endswith(TABLE_SUFFIXES):  # POSCAR.csv.gz: a table
            raise UploadError(f"{upload.name}: not a structure file this server reads (by its name); upload {ACCEPTED}",
                              415)
        with open(path, "wb") as out:
            copied = _copy(upload.stream, out, limits.file_bytes)
        if copied > limits.file_bytes:
            raise UploadError(f"{upload.name}: larger than the limit of {megabytes(limits.file_bytes)} per file", 413)
        paths.append(path)
    return paths


def _copy(source: BinaryIO, out: BinaryIO, limit: int, chunk: int = 1 << 16) -> int:
    """Copy at most ``limit`` + 1 bytes (enough to know the file is too large); returns the bytes copied."""
    copied = 0
    while copied <= limit:
        block = source.read(min(chunk, limit + 1 - copied))
        if not block:
            break
        out.write(block)
        copied += len(block)
    return copied


def read_uploads(paths: Sequence[Path], limits: Limits) -> RawDataset:
    """The structures of the saved files, as ``cgcnn-lab predict a.cif b.vasp`` reads them (a bad file among good
    ones is skipped and reported; alone, it is the error), checked against the limits."""
    raw = read_structure_files(paths)  # structure files only: never a table, whatever the name says
    folder = f"{paths[0].parent.name}/"
    for entry in raw.entries:  # POSCAR, CONTCAR, structure.cif: their id would carry the temporary folder's name
        entry.id = entry.id.removeprefix(folder)
    if len(raw.entries) > limits.structures:
        raise UploadError(f"{len(raw.entries)} structures in the upload (each frame of an extxyz file counts): this "
                          f"server takes at most {limits.structures} per request", 413)
    for entry in raw.entries:
        n, listed = atom_count(entry, limits.atoms)
        if n is not None and n > limits.atoms:
            count = f"{n} sites listed before its symmetry is applied" if listed else f"{n} atoms"
            raise UploadError(f"{entry.where}: too many atoms for this server ({count}): it takes at most "
                              f"{limits.atoms} per structure", 413)
    return raw


def atom_count(entry: Entry, limit: int) -> tuple[int | None, bool]:
    """(atoms of one entry, read before the much dearer neighbour search; True if only the sites a CIF lists were
    counted, more than ``limit`` already); None if it cannot be read (featurising then says why, as the command
    line does)."""
    text = entry.content
    if not isinstance(text, str):
        return len(text), False
    if text.lstrip().startswith("{"):  # structure JSON of a POSCAR or extxyz frame (data/files.py)
        sites = json.loads(text).get("sites", [])
        return (len(sites) if isinstance(sites, list) else None), False
    cell = read_plain_cif(text)
    if cell is not None:
        return len(cell.z), False
    listed = _listed_sites(text)
    if listed > limit:  # symmetry only adds atoms: refused without expanding them
        return listed, True
    try:
        return len(parse_structure(entry)), False  # a CIF with symmetry operations: its sites expanded
    except DataError:
        return None, False


def _listed_sites(text: str) -> int:
    """Rows of a CIF's atom-site loop (0 if gemmi cannot read it: pymatgen's reader then says why)."""
    import gemmi

    try:
        doc = gemmi.cif.read_string(text)
        return max((len(block.find_values("_atom_site_fract_x")) for block in doc), default=0)
    except (RuntimeError, ValueError):
        return 0


def scrub(text: str, folder: Path) -> str:
    """A message without the temporary folder: ``/tmp/x/a.cif: unreadable CIF`` -> ``a.cif: unreadable CIF``."""
    return text.replace(f"{folder}/", "").replace(str(folder), "upload")

