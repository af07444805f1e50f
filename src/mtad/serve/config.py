"""`ServeConfig`: what an `mtad serve` server is started with. Apart from the app (no web framework
imported), so the command line can read its defaults without the serve extra installed."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtad.decoding.speculation import Limits


@dataclass(frozen=True)
class ServeConfig:
    """Server settings. `defaults`: decoding keyword arguments for `mtad.stream`, as
    `mtad.cli.common.decoding_settings` returns them; a request overrides them field by field."""

    model_name: str
    defaults: dict
    max_queue: int = 64
    max_batch_size: int = 8  # requests decoded together (continuous batching); 1 = one at a time
    request_timeout_s: float | None = 120.0
    limits: Limits = field(default_factory=Limits)  # ceilings on gamma, beams and tree nodes
    max_request_bytes: int = 4 * 2**20  # a larger body is refused (413) before it is read whole
    api_key: str | None = field(default=None, repr=False)  # None: no authentication (`mtad.serve.auth`)
    metrics_need_key: bool = False  # with api_key: /metrics needs it too (/health never does)
    batch_invariant: bool = False  # each request decodes as if alone (see `Scheduler`)
