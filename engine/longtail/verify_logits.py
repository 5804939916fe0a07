"""verify-logits: the checks the gating stage relies on, one line each; any failure fails the run."""

from __future__ import annotations

from engine.common.logit_files import logits_folder, verify
from engine.core.config import JobSpec
from engine.core.errors import JobError
from engine.core.recorder import RunRecorder
from engine.longtail.config import VerifyLogitsConfig


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: VerifyLogitsConfig = spec.config  # type: ignore[assignment]
    folder = logits_folder(cfg.logits)
    checks = verify(folder)
    for c in checks:
        print(c.line(), flush=True)
        rec.event("check", name=c.name, ok=c.ok, detail=c.detail)
    failed = [c.name for c in checks if not c.ok]
    rec.log_summary({"checks_passed": len(checks) - len(failed), "checks_failed": len(failed)})
    if failed:
        raise JobError(f"{len(failed)} of {len(checks)} checks failed ({', '.join(failed)}) on {folder}; "
                       "recompute the logits of the experts named above")
