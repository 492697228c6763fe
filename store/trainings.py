"""Trainings in the run store: one row per self-distillation training (``workbench train``).

:class:`TrainingMixin` holds RunStore's training methods. The trainer starts a
row, writes what it measures as it goes, and closes it::

    tid = store.start_training(kind="eagle", target="smollm2-135m", out_dir=str(out), config=cfg, env=env)
    store.update_training(tid, data={"prompts": 256, "responses": 256, "tokens": 61440, "heldout_tokens": 4096})
    store.update_training(tid, curves={"loss": [[0, 9.1], [10, 6.2]], "lr": [[0, 0.0], [10, 3e-4]]})
    store.finish_training(tid, accuracy={"top1": [0.61, 0.38], "top5": [0.83, 0.62]},
                          timings={"generate_s": 80.2, "features_s": 12.5, "train_s": 301.0, "total_s": 395.1})

``update_training`` replaces each JSON field it is given (send the whole curve
each time) and is the training's heartbeat: a training left ``running`` by a
killed process becomes ``interrupted`` (store.liveness) with what it had
written, and one wrongly taken for gone is ``running`` again at its next update.

JSON is stored strict: NaN and infinities become null (a diverged loss shows as
a gap in its curve, and every reader can parse the column), tuples and sets
become lists, numpy and torch numbers and arrays their Python values, other
objects their ``to_dict()`` or their text.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import delete, literal_column, select, update

from workbench.config import TRAINING_KINDS

from . import liveness
from .db import StoreError
from .models import RUN_STATUSES, Training, utcnow
from .records import as_dict, training_dict
from .retry import writes


def finite_json(value: Any) -> Any:
    """``value`` as plain JSON data with no NaN or infinity (those become None)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):  # numpy.float64 too
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [finite_json(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return finite_json(value.tolist())
    if hasattr(value, "to_dict"):
        return finite_json(value.to_dict())
    return str(value)


def _json_field(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) and not hasattr(value, "to_dict"):
        raise StoreError(f"training {name} must be a dict, got {type(value).__name__}")
    return finite_json(as_dict(value))


class TrainingMixin:
    """Training methods of RunStore (which provides session_scope, _resolve and reap_interrupted)."""

    @writes
    def start_training(self, *, kind: str, target: str, out_dir: str | Path | None, config: dict[str, Any],
                       env: dict[str, Any]) -> str:
        """Record a new ``running`` training owned by this process and return its id."""
        if kind not in TRAINING_KINDS:
            raise StoreError(f"training kind must be one of {', '.join(TRAINING_KINDS)}, got {kind!r}")
        if not str(target or "").strip():
            raise StoreError("a training needs a target model spec")
        training_id = uuid.uuid4().hex
        with self.session_scope() as s:
            s.add(Training(id=training_id, created_at=utcnow(), status="running", kind=kind, target=str(target),
                           out_dir=None if out_dir is None else str(out_dir),
                           config=_json_field("config", config or {}), env=_json_field("env", env or {}),
                           **liveness.owner_columns()))
        return training_id

    @writes
    def update_training(self, training_id: str, *, data: dict[str, Any] | None = None,
                        curves: dict[str, Any] | None = None, accuracy: dict[str, Any] | None = None,
                        timings: dict[str, Any] | None = None) -> None:
        """Replace the JSON fields given (None leaves a field as it is) and write the heartbeat.

        With no fields it is only the heartbeat. A training marked ``interrupted``
        while its owner was only slow is ``running`` again.
        """
        fields = {"data": data, "curves": curves, "accuracy": accuracy, "timings": timings}
        values: dict[str, Any] = {k: _json_field(k, v) for k, v in fields.items() if v is not None}
        with self.session_scope() as s:
            status = s.execute(select(Training.status).where(Training.id == training_id)).scalar()
            if status is None:
                raise StoreError(f"no training with id {training_id!r}")
            values["heartbeat_at"] = utcnow()
            if status == "interrupted":
                values.update(status="running", error=None, finished_at=None, **liveness.owner_columns())
            s.execute(update(Training).where(Training.id == training_id).values(**values)
                      .execution_options(synchronize_session=False))

    @writes
    def finish_training(self, training_id: str, status: str = "finished", error: str | None = None, *,
                        accuracy: dict[str, Any] | None = None, timings: dict[str, Any] | None = None) -> None:
        """Close a training (``finished``, ``failed`` or ``interrupted``), with its final accuracy and timings."""
        if status not in RUN_STATUSES:
            raise StoreError(f"training status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        values: dict[str, Any] = {"status": status, "error": None if error is None else str(error),
                                  "finished_at": None if status == "running" else utcnow(),
                                  "heartbeat_at": utcnow()}
        for name, value in (("accuracy", accuracy), ("timings", timings)):
            if value is not None:
                values[name] = _json_field(name, value)
        with self.session_scope() as s:
            res = s.execute(update(Training).where(Training.id == training_id).values(**values)
                            .execution_options(synchronize_session=False))
            if not res.rowcount:
                raise StoreError(f"no training with id {training_id!r}")

    def list_trainings(self, kind: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
        """Trainings (every column, see records.training_dict), newest first; filtered by exact kind / target."""
        self.reap_interrupted()
        stmt = select(Training)
        if kind is not None:
            stmt = stmt.where(Training.kind == kind)
        if target is not None:
            stmt = stmt.where(Training.target == str(target))
        stmt = stmt.order_by(Training.created_at.desc(), literal_column("trainings.rowid").desc())
        with self.session_scope() as s:
            return [training_dict(t) for t in s.scalars(stmt)]

    def get_training(self, training_id: str) -> dict[str, Any]:
        """One training by id or unique prefix (every column, see records.training_dict)."""
        with self.session_scope() as s:
            tid = self._resolve(s, Training, training_id, "training")
            row = s.get(Training, tid)
            assert row is not None
            return training_dict(row)

    @writes
    def delete_training(self, training_id: str) -> None:
        """Delete one training record (id or unique prefix); the files in its out_dir stay."""
        with self.session_scope() as s:
            tid = self._resolve(s, Training, training_id, "training")
            s.execute(delete(Training).where(Training.id == tid).execution_options(synchronize_session=False))
