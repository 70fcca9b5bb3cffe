"""The model registry: immutable versions by content, aliases with history, promote, rollback, tampering,
and a selector that follows an alias and reloads while decisions run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dwcp_selector.errors import ArtifactError, ConfigError
from dwcp_selector.link import SystemState, link_from_class
from dwcp_selector.serving import ModelRegistry, Selector
from dwcp_selector.serving.registry import content_id

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "selector"


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped model and a second version of it (same networks, another model card)."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(MODEL, a)
    shutil.copytree(MODEL, b)
    with (b / "MODEL_CARD.md").open("a") as f:
        f.write("\nRetrained candidate.\n")
    return a, b


def test_register_promote_rollback_and_the_history(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, b = two_models
    reg = ModelRegistry(tmp_path / "reg", create=True)
    va = reg.register(a, alias="champion", why="first model")
    assert va == content_id(a) and reg.register(a) == va  # the same content is the same version
    vb = reg.register(b, alias="challenger", why="candidate")
    assert vb != va and reg.aliases() == {"champion": va, "challenger": vb}
    assert reg.promote(vb[:8], why="A/B gate passed") == vb
    assert reg.aliases() == {"champion": vb, "previous": va}  # the challenger became the champion
    assert reg.rollback(why="guardrail: near-optimal 93 %") == va
    assert reg.aliases() == {"champion": va}
    with pytest.raises(ConfigError, match="nothing to roll back to"):
        reg.rollback(why="again")
    moves = [(m.alias, m.from_id, m.to_id) for m in reg.history()]
    assert moves == [
        ("champion", None, va),
        ("challenger", None, vb),
        ("previous", None, va),
        ("champion", va, vb),
        ("challenger", vb, None),
        ("champion", vb, va),
        ("previous", va, None),
    ]
    assert all(m.why and m.who and m.at for m in reg.history())
    assert "guardrail" in reg.history()[-2].why
    assert [v.id for v in reg.versions()] == sorted([va, vb], key=[va, vb].index)
    with pytest.raises(ConfigError, match="already version"):
        reg.promote("champion", why="no-op")


def test_a_version_changed_after_registration_is_refused(
    tmp_path: Path, two_models: tuple[Path, Path]
) -> None:
    a, _ = two_models
    reg = ModelRegistry(tmp_path / "reg", create=True)
    vid = reg.register(a, alias="champion")
    onnx = reg.path("champion") / "light.onnx"
    assert not onnx.stat().st_mode & 0o222  # registered files are read-only
    onnx.chmod(0o644)
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 1
    onnx.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"version {vid} was modified after registration"):
        reg.path("champion")


def test_a_tampered_or_foreign_model_is_not_registered(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, _ = two_models
    (a / "light.onnx").chmod(0o644)
    with (a / "light.onnx").open("ab") as f:
        f.write(b"\0")
    reg = ModelRegistry(tmp_path / "reg", create=True)
    with pytest.raises(ArtifactError):
        reg.register(a)
    assert reg.versions() == []
    with pytest.raises(ConfigError, match="not a model registry"):
        ModelRegistry(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="no model version or alias"):
        reg.path("champion")


def test_a_selector_follows_its_alias_and_reloads_under_load(
    tmp_path: Path, two_models: tuple[Path, Path]
) -> None:
    a, b = two_models
    reg = ModelRegistry(tmp_path / "reg", create=True)
    va = reg.register(a, alias="champion")
    vb = reg.register(b)
    sel = Selector(reg.path("champion"), host_profile=None)
    payload = np.random.default_rng(1).integers(0, 64, 256 << 10, dtype=np.uint8).tobytes()
    link, system = link_from_class("wan"), SystemState(free_cores=2)
    errors: list[BaseException] = []
    done = threading.Event()
    decisions = 0

    def decide() -> None:
        nonlocal decisions
        while not done.is_set():
            try:
                sel.select(payload, link, system, payload_type="logs")
                decisions += 1
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                return

    workers = [threading.Thread(target=decide) for _ in range(2)]
    for t in workers:
        t.start()
    try:
        for i in range(6):  # promote and roll back while decisions run
            if i % 2 == 0:
                reg.promote(vb, why="test")
            else:
                reg.rollback(why="test")
            assert sel.check_alias(reg)
            assert sel.model_dir.name == reg.aliases()["champion"]
        assert not sel.check_alias(reg)  # nothing moved: nothing reloaded
    finally:
        done.set()
        for t in workers:
            t.join(30)
    assert not errors and decisions > 0 and sel.reloads == 6
    assert sel.model_dir.name == va
    # a champion tampered with on disk is not followed: the selector keeps deciding on the one it has
    reg.promote(vb, why="test")
    onnx = reg.root / "versions" / vb / "light.onnx"
    onnx.chmod(0o644)
    onnx.write_bytes(onnx.read_bytes()[:-1])
    assert not sel.check_alias(reg) and sel.reload_errors == 1 and "modified" in str(sel.last_reload_error)
    assert sel.model_dir.name == va
    sel.select(payload, link, system, payload_type="logs")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dwcp_selector", "models", *args], capture_output=True, text=True, timeout=120
    )


def test_models_command_line(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, b = two_models
    reg = str(tmp_path / "reg")
    r = _cli("register", "--registry", reg, str(a), "--alias", "champion", "--why", "first", "--json")
    assert r.returncode == 0, r.stderr
    va = json.loads(r.stdout)["version"]
    vb = _cli("register", "--registry", reg, str(b)).stdout.strip()
    assert _cli("promote", "--registry", reg, vb, "--why", "gate passed").returncode == 0
    shown = json.loads(_cli("show", "--registry", reg, "previous", "--json").stdout)
    assert shown["version"] == va and shown["aliases"] == {"champion": vb, "previous": va}
    assert _cli("rollback", "--registry", reg, "--why", "bad").stdout.strip() == va
    listed = json.loads(_cli("list", "--registry", reg, "--json").stdout)
    assert {v["id"]: v["aliases"] for v in listed["versions"]} == {va: ["champion"], vb: []}
    for args, needle in [
        (("promote", "--registry", reg, "nosuch", "--why", "x"), "no model version or alias"),
        (("rollback", "--registry", reg, "--why", "x"), "nothing to roll back to"),
        (("show", "--registry", str(tmp_path / "none")), "not a model registry"),
        (("promote", "--registry", reg, va, "--alias", "Bad Alias", "--why", "x"), "alias"),
    ]:
        r = _cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode not in (0, 3) and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert needle in lines[0], r.stderr
