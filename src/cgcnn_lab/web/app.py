"""The FastAPI app of ``cgcnn-lab serve``: the page, ``GET /models``, ``GET /limits``, ``POST /predict`` and
``POST /view``, documented on FastAPI's OpenAPI page (``/docs``, ``/openapi.json``).

Each request's uploads live in a ``TemporaryDirectory`` removed when it is answered; models are only those named
when the server started. A user's mistake is answered with the command line's message as ``detail`` (4xx), never
a traceback. Model runs take turns (a lock): PyTorch already uses every core for one, and requests running side by
side would only make each other's OpenMP threads spin (cpu.py).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name local fields
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from cgcnn_lab.contributions import site_contributions
from cgcnn_lab.data.dataset import build_dataset
from cgcnn_lab.data.sources import RawDataset
from cgcnn_lab.inference import expand_ensembles, load_trained, predict_data
from cgcnn_lab.version import __version__
from cgcnn_lab.web import results
from cgcnn_lab.web.limits import ACCEPTED, Limits, megabytes
from cgcnn_lab.web.models import ServedModel, serve_models
from cgcnn_lab.web.schemas import LimitsInfo, ModelInfo, PredictResult, Problem, StructureView
from cgcnn_lab.web.uploads import Upload, UploadError, read_uploads, save_uploads, scrub
from cgcnn_lab.web.view import structure_view

STATIC = Path(__file__).resolve().parent / "static"


class BodyLimit:
    """ASGI middleware refusing a request body over ``limit`` bytes (413) before the form parser spools it to
    disk: by its Content-Length at once, or, sent in chunks, when the count passes the limit."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    def message(self) -> str:
        return f"the upload is larger than the limit of {megabytes(self.limit)} per request"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": self.message()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self.message())
            return message

        await self.app(scope, counted, send)


def _validation_message(err: RequestValidationError, models: Sequence[str]) -> str:
    """A missing or wrong form field, said as a person would: one line."""
    parts = []
    for e in err.errors():
        field = str(e.get("loc", ("", "?"))[-1])
        if field == "files":
            parts.append(f"no files: upload one or more structure files as the form field 'files' ({ACCEPTED})")
        elif field == "model":
            parts.append(f"no model: name one as the form field 'model' ({', '.join(models)})")
        else:
            parts.append(f"form field {field!r}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(models: Sequence[str | Path] | Mapping[str, ServedModel] = (), limits: Limits | None = None, *,
               atom_init: str | Path | None = None, with_zoo: bool | None = None,
               hosts: Sequence[str] | None = None) -> FastAPI:
    """The app serving ``models`` (zoo names, run folders, checkpoints, ensembles; none: the zoo), each loaded
    here so that a broken one fails now, with the command line's message. ``hosts``: the only Host headers
    answered (``cgcnn-lab serve`` on a loopback address passes ``LOOPBACK``: a web page whose name resolves to
    127.0.0.1 cannot reach the server through it)."""
    served = dict(models) if isinstance(models, Mapping) else serve_models(models, atom_init, with_zoo)
    limits = limits or Limits()
    lock = threading.Lock()
    app = FastAPI(
        title="cgcnn-lab serve", version=__version__,
        description=("Predict with CGCNN models from structure files, and see why: a page at `/` and this JSON "
                     f"API. Limits: {limits.describe()}. Errors answer `{{\"detail\": message}}`."))
    app.state.served, app.state.limits = served, limits
    app.add_middleware(BodyLimit, limit=limits.request_bytes)
    if hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))

    @app.middleware("http")
    async def same_origin(request: Request, call_next):
        """A page of another site may not post to this server from the user's browser (uploads, model runs)."""
        origin = request.headers.get("origin")
        if request.method != "GET" and origin and urlsplit(origin).netloc != request.headers.get("host"):
            return JSONResponse({"detail": f"refused: a request from the page of another site ({origin})"},
                                status_code=403)
        return await call_next(request)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    errors = {code: {"model": Problem, "description": text} for code, text in [
        (404, "no such model on this server, or no such structure in the upload"),
        (413, f"too large: {limits.describe()}"), (415, f"not a structure file this server reads: {ACCEPTED}"),
        (422, "unreadable file, unknown element, or no structure that could be predicted")]}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(err, list(served))}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:  # logged by the server, not shown
        return JSONResponse({"detail": f"internal error ({type(err).__name__}); the server's log has the details"},
                            status_code=500)

    def pick(name: str) -> ServedModel:
        if name not in served:
            raise HTTPException(404, f"no model {name!r} on this server; it serves: {', '.join(served)}")
        return served[name]

    @contextmanager
    def uploaded(files: list[UploadFile]) -> Iterator[tuple[RawDataset, Path]]:
        """The request's structures, read in a temporary folder that is gone when the answer is made; a user's
        mistake (ValueError: DataError, CheckpointError, UploadError) becomes a 4xx with its message."""
        with tempfile.TemporaryDirectory(prefix="cgcnn-lab-serve-") as tmp:
            folder = Path(tmp)
            try:
                paths = save_uploads([Upload(f.filename or "upload", f.file) for f in files], folder, limits)
                yield read_uploads(paths, limits), folder
            except UploadError as err:
                raise HTTPException(err.status, scrub(str(err), folder)) from None
            except ValueError as err:
                raise HTTPException(422, scrub(str(err), folder)) from None

    model_field = Form(description=f"a model this server serves: {', '.join(served)} (GET /models)")
    files_field = File(description=f"one or more structure files: {limits.describe()}")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/models", response_model=list[ModelInfo], summary="The models this server serves")
    def models_() -> list[dict]:
        return [m.info() for m in served.values()]

    @app.get("/limits", response_model=LimitsInfo, summary="What one request may hold")
    def limits_() -> dict:
        return limits.as_dict()

    @app.post("/predict", response_model=PredictResult, responses=errors, summary="Predict for structure files",
              description=("The predictions of `model` for every structure of `files`, as `cgcnn-lab predict MODEL "
                           "FILES` makes them: a file that cannot be read is skipped and named in `notes` (alone, it "
                           f"is the error). {limits.describe()}."))
    def predict(model: Annotated[str, model_field], files: Annotated[list[UploadFile], files_field]) -> dict:
        chosen = pick(model)
        with uploaded(files) as (raw, folder):
            notes: list[str] = []
            with lock:
                pred = predict_data([chosen.ref], raw, chosen.atom_init, use_cache=False, strict=False,
                                    log=notes.append)
            columns, table = results.rows(pred, results.files_of(raw, folder))
            spec = pred.spec
            return {"model": chosen.name, "task": spec.task, "unit": spec.unit or None,
                    "targets": list(spec.target_names),
                    "classes": spec.class_names if spec.task == "classification" else None,
                    "columns": columns, "rows": table, "skipped": len(raw.entries) - len(pred) + len(raw.problems),
                    "notes": [scrub(line, folder) for note in notes for line in note.splitlines()],
                    "warnings": [scrub(w, folder) for w in pred.warnings()], "csv": results.csv_text(pred, folder)}

    @app.post("/view", response_model=StructureView, responses=errors, summary="One structure for the 3-D view",
              description=("The atoms, cell and neighbour graph of structure `id` (default: the first) of `files` as "
                           "`model` reads them, with each site's contribution for a model with an atom readout "
                           "(as `cgcnn-lab explain`)."))
    def view(model: Annotated[str, model_field], files: Annotated[list[UploadFile], files_field],
             id: Annotated[str | None, Form(description="the structure's id (as in POST /predict's rows)")] = None,
             ) -> dict:
        chosen = pick(model)
        with uploaded(files) as (raw, folder):
            entry = next((e for e in raw.entries if id is None or e.id == id), None)
            if entry is None:
                raise HTTPException(404, f"no structure {id!r} in the upload; it holds "
                                         f"{', '.join(e.id for e in raw.entries[:10])}")
            one = RawDataset(raw.name, [entry], [], [], [], None)
            with lock:
                pred = predict_data([chosen.ref], one, chosen.atom_init, use_cache=False, log=lambda *_: None)
                trained = load_trained(expand_ensembles([chosen.ref])[0][0], atom_init=chosen.atom_init)
                frame = None
                if chosen.atom_readout:
                    dataset = build_dataset(one, trained.graph_config, trained.encoding, use_cache=False)
                    frame = site_contributions(trained, dataset)
            files_by_id = results.files_of(one, folder)
            drawn = structure_view(entry, trained.graph_config,
                                   None if frame is None else frame["contribution"].to_numpy())
            note = "" if frame is not None else (
                "an ensemble: its members' per-site contributions differ, none is shown" if chosen.members > 1 else
                "this model pools atoms before its output layer (no atom readout): no per-site contributions; "
                "train with --readout atom for them")
            return drawn | {
                "model": chosen.name, "file": files_by_id[entry.id], "prediction": results.rows(pred, files_by_id)[1][0],
                "contribution_unit": chosen.contribution_unit if frame is not None else None,
                "crystal_value": None if frame is None else results.plain(frame["crystal_value"].iloc[0]),
                "note": note}

    return app
