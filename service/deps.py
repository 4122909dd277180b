"""The typed dependencies of the routes: what each one needs from the running app.

The app's lifespan puts its services on ``app.state``; these read them back, typed, so a route
declares what it uses (``sessions: SessionsDep``) instead of reaching into ``request``.
Sessions are opened by the route itself (``with sessions() as db``), not by a yield
dependency: FastAPI would close those on a pool thread, and with a small pool the closes
queued behind requests waiting for connections (a deadlock seen under 50 concurrent clients).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from service.code_store import CodeStore
from service.readiness import Readiness
from service.reconciler import Reconciler
from service.settings import ServiceSettings
from sweeps import Limits


def settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def limits(request: Request) -> Limits:
    return request.app.state.limits


def reconciler(request: Request) -> Reconciler:
    return request.app.state.reconciler


def readiness(request: Request) -> Readiness:
    return request.app.state.readiness


def code_store(request: Request) -> CodeStore:
    return request.app.state.code_store


SettingsDep = Annotated[ServiceSettings, Depends(settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(sessions)]
LimitsDep = Annotated[Limits, Depends(limits)]
ReconcilerDep = Annotated[Reconciler, Depends(reconciler)]
ReadinessDep = Annotated[Readiness, Depends(readiness)]
CodeStoreDep = Annotated[CodeStore, Depends(code_store)]
