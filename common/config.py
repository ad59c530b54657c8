"""One place that knows where the Hydra config lives, for CLIs and for code/tests that compose it."""
from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


class ConfigError(ValueError):
    """A config value that cannot work; raised before any work starts."""


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose the project config as the CLIs would, without running a Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


@contextlib.contextmanager
def exit_on(stage: str, *errors: type[BaseException], code: int = 1) -> Iterator[None]:
    """In a CLI, report expected failures (bad input, missing files, bad config) as one line
    `stage: reason` on stderr and exit with `code`, rather than a traceback."""
    try:
        yield
    except errors as exc:
        print(f"{stage}: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(code) from None


def one_line(exc: BaseException) -> str:
    """The message of an expected failure on one line; a full disk says what to do."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"no space left on the device{where} ({exc}); free some space and rerun (outputs are "
                "written to temporaries and renamed when complete: the previous ones are untouched)")
    return " ".join(str(exc).split("\n")) if isinstance(exc, OSError) else str(exc)
