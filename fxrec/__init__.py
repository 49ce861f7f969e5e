"""fxrec: train one foundation model (FM), make many small expert models (VMs) better with it."""

from __future__ import annotations

__version__ = "0.1.0"


def _check_stack() -> None:
    """Fail early, with the fix, when the pinned torch / fbgemm / torchrec trio is missing or mismatched."""
    try:
        import torchrec  # noqa: F401
    except ImportError as error:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            "fxrec needs torchrec==1.8.0 with fbgemm-gpu-cpu==1.8.0 and torch==2.13.0. "
            "Run `make setup` (it installs torchrec with --no-deps, as its metadata asks for the CUDA fbgemm). "
            f"Original error: {error}"
        ) from error



class _DropFxTracingNotice:
    """torch 2.13 logs a deprecation notice the first time anything calls `torch.fx.is_fx_tracing()`;
    TorchRec 1.8's KeyedJaggedTensor regrouping does, inside every model's first forward. The notice is
    addressed to TorchRec, not to fxrec's users, so it is dropped; every other torch.fx message passes."""

    def filter(self, record: object) -> bool:
        return "is_fx_tracing will return true" not in str(getattr(record, "msg", ""))


def _quiet_third_party_notices() -> None:
    import logging

    logging.getLogger("torch.fx._symbolic_trace").addFilter(_DropFxTracingNotice())


_check_stack()
_quiet_third_party_notices()
