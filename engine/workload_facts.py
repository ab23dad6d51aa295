"""What a workload learned from its inputs before it ran: typed, one model per workload.

The plan says what to run (``RunPlan.workload``); these say what the inputs turned out to be (how
many lines a file held, which speed text was found and its digest, a training file's format, the
tasks a task list expanded to). A snapshot and its ``run_started`` event carry both, and nothing
restates a plan field here: a report that shows a run's settings reads them from the plan.

Fields are optional where a file written by an older schema may not say them (``migrate``); a new
run fills every one that applies.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Scalar = Union[str, int, float, bool, None]


class _Facts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The settings an older schema recorded, as it wrote them: kept only for a migrated file whose plan
    # could not be rebuilt, so that its report still says how it ran.
    recorded: dict[str, Scalar] | None = None

    def rows(self) -> list[tuple[str, Scalar]]:
        """The facts as (name, value) rows for a report: scalars only, the workload's name left out."""
        out: list[tuple[str, Scalar]] = []
        for key in type(self).model_fields:
            if key in ("name", "recorded"):
                continue
            value = getattr(self, key)
            if isinstance(value, tuple):
                value = ", ".join(str(v) for v in value) or None
            if isinstance(value, BaseModel):
                continue
            out.append((key, value))
        out.extend((self.recorded or {}).items())
        return out


class EncodeFacts(_Facts):
    name: Literal["encode"] = "encode"
    input: str | None = None  # a file's path, "standard input" or "built-in sample corpus"
    lines: int | None = None


class SpeedFacts(_Facts):
    name: Literal["speed"] = "speed"
    protocol: str = "MTEB v1 SpeedTask"
    warmups: int = 1  # the protocol's own: one untimed pass
    text_path: str | None = None
    text_source: str | None = None  # where the text was found (an option, the environment, the cache, a download)
    text_sha256: str | None = None
    text_is_canonical: bool | None = None  # the digest is the published text's
    paragraphs: int | None = None
    words: int | None = None


class SimilarityFacts(_Facts):
    name: Literal["similarity"] = "similarity"
    source: str | None = None  # "built-in example", or where the queries and documents came from
    queries: int | None = None
    documents: int | None = None


class SweepFacts(_Facts):
    name: Literal["sweep"] = "sweep"
    input: str | None = None
    batch_size: int | None = None  # the batch every point used when batch is not an axis


class LoadFacts(_Facts):
    name: Literal["load"] = "load"
    input: str | None = None  # None: texts built to a length, or a mix
    arrivals: str | None = None  # "poisson" or "closed loop"
    latency_from: str | None = None  # when each request was due (open loop) or sent (closed loop)


class MtebFacts(_Facts):
    name: Literal["mteb"] = "mteb"
    tasks: tuple[str, ...] = ()  # the plan's task list as mteb resolved it
    speed_loops: int | None = None  # the SpeedTasks' loops; None when the list has none


class TrainFacts(_Facts):
    name: Literal["train"] = "train"
    data_format: str | None = None  # scored pairs, pairs or triplets
    examples: int | None = None
    loss_class: str | None = None  # the loss "auto" chose, by its class name


class CellFacts(_Facts):
    name: Literal["cell"] = "cell"
    cost: str | None = None  # what each timed encode of the cell measured ("speed text, batch 32")
    text_sha256: str | None = None


class VersusFacts(_Facts):
    """``--vs``: the inner workload's facts, and the second model's name as shown."""

    name: Literal["encode-vs", "speed-vs"]
    inner: Annotated[EncodeFacts | SpeedFacts, Field(discriminator="name")]
    vs_model: str | None = None
    pairs: int | None = None
    order: str = "ABBA"

    def rows(self) -> list[tuple[str, Scalar]]:
        return self.inner.rows() + super().rows()


WorkloadFacts = Annotated[
    EncodeFacts | SpeedFacts | SimilarityFacts | SweepFacts | LoadFacts | MtebFacts | TrainFacts | CellFacts | VersusFacts,
    Field(discriminator="name"),
]
NAMES = ("encode", "speed", "similarity", "sweep", "load", "mteb", "train", "cell", "encode-vs", "speed-vs")
