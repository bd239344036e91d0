"""The web console at /ui, and the read-only JSON it needs beside /v1/recommend and /v1/events.

The page (console/index.html, console.js, console.css) loads nothing from the network: it works offline
and in an air-gapped cluster. The page itself holds no data and needs no key; everything it shows comes
from the API with the key the person types (kept in the tab's sessionStorage only):

- `GET /v1/model`: the live model (ModelInfo: version, catalog size, metadata columns, metrics, example users);
- `GET /v1/model/report`: the bundle's training report, one self-contained HTML page;
- `GET /v1/history?user_id=...&limit=...`: a user's stored history with display names, oldest first.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from google.protobuf.json_format import MessageToDict

from seqrec.proto.v1 import common_pb2, ranker_pb2
from seqrec.services.gateway.errors import error_response, ranker_answer

CONSOLE_DIR = Path(__file__).parent / "console"
CONSOLE_PATH = "/ui"
MAX_HISTORY = 1000


def add_console(app: FastAPI, deadline_s: float) -> None:
    """Mount the page and its assets, and the three read-only endpoints."""
    app.mount(f"{CONSOLE_PATH}/assets", StaticFiles(directory=CONSOLE_DIR), name="console-assets")

    @app.get(CONSOLE_PATH, include_in_schema=False)
    async def console_page() -> FileResponse:
        return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html")

    @app.get("/v1/model", tags=["console"], summary="The live model: version, catalog, metrics, example users")
    async def model_info(request: Request) -> Response:
        answer = await ranker_answer(request, "GetModelInfo", common_pb2.GetModelInfoRequest(), deadline_s)
        if isinstance(answer, Response):
            return answer
        return JSONResponse(MessageToDict(answer, preserving_proto_field_name=True,
                                          always_print_fields_with_no_presence=True))

    @app.get("/v1/model/report", tags=["console"], summary="The live model's training report (HTML)",
             response_class=HTMLResponse)
    async def training_report(request: Request) -> Response:
        answer = await ranker_answer(request, "GetTrainingReport", ranker_pb2.GetTrainingReportRequest(), deadline_s)
        if isinstance(answer, Response):
            return answer
        if not answer.html:
            return error_response(404, "not_found", f"bundle {answer.bundle_version} has no HTML training report "
                                  "(built before reports were HTML)", request_id=request.state.request_id)
        return HTMLResponse(answer.html)

    @app.get("/v1/history", tags=["console"], summary="A user's stored history, oldest first")
    async def history(request: Request, user_id: str = "", limit: str = "50") -> Response:
        # checked here rather than by FastAPI, so the 400 names the query parameter like every other field error
        problem = None
        if not 1 <= len(user_id) <= 2048:
            problem = ("user_id", "required, at most 2048 characters")
        elif not limit.isdigit() or int(limit) > MAX_HISTORY:
            problem = ("limit", f"an integer from 0 to {MAX_HISTORY} (0 = everything stored)")
        if problem:
            return error_response(400, "invalid_argument", f"{problem[0]}: {problem[1]}", field=problem[0],
                                  request_id=request.state.request_id)
        answer = await ranker_answer(request, "GetHistory", ranker_pb2.GetHistoryRequest(user_id=user_id,
                                                                                         limit=int(limit)), deadline_s)
        if isinstance(answer, Response):
            return answer
        names = list(answer.display_names) or [""] * len(answer.item_ids)  # a ranker older than display names
        items = [{"item_id": item, "timestamp_ms": ts, "display_name": name or None}
                 for item, ts, name in zip(answer.item_ids, answer.timestamps_ms, names, strict=True)]
        return JSONResponse({"user_id": answer.user_id, "items": items})
