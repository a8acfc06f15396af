"""Sessions: tests per package (each in a fresh venv with only core beside it), integration,
lint, typecheck, bench, icount. Bare ``nox`` runs what CI needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
PACKAGES = ["core", *PLUGINS]
CORE_WITH_PLUGINS = ["core/tests/test_model_discovery.py", "core/tests/test_settings_documented.py"]

# canary-quick: the newest Claude Code release against the core cells of the compatibility
# matrix (~1.5 min; docs/claude-code.md#the-canary).
nox.options.sessions = ["tests", "integration", "lint", "typecheck", "deploy", "canary-quick"]
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True


def _path(package: str) -> str:
    return "core" if package == "core" else f"plugins/{package}"


def _install_all(session: nox.Session) -> None:
    session.install("-e", "core[test]", *[a for p in PLUGINS for a in ("-e", f"{_path(p)}[test]")])


@nox.session(python="3.11")
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package's own tests, with only midway core installed beside it."""
    args = ["-e", "core[test]"]
    if package != "core":
        args += ["-e", f"{_path(package)}[test]"]
    session.install(*args)
    session.run("pytest", f"{_path(package)}/tests", "-q", *session.posargs)


@nox.session(python="3.11")
def integration(session: nox.Session) -> None:
    """Cross-package and end-to-end tests in tests/, every package installed. Tests marked
    ``known_failure`` (a fault finding not fixed yet) run in ``nox -s faults`` instead."""
    _install_all(session)
    # core's tests that need a plugin installed skip in core's own session: they run here
    session.run("pytest", "tests", *CORE_WITH_PLUGINS, "-q", "-m", "not known_failure",
                *session.posargs)


@nox.session(python="3.11")
def faults(session: nox.Session) -> None:
    """Fault tests that still find a defect (marked ``known_failure``, each naming it): run
    them to see whether a fix holds; not part of CI until they pass."""
    _install_all(session)
    # exit 5: no test is marked (every finding fixed)
    session.run("pytest", "tests", "-q", "-m", "known_failure", *session.posargs,
                success_codes=[0, 5])


@nox.session(python="3.11")
def attack(session: nox.Session) -> None:
    """The attack suite (issue #17): every test marked ``attack``, one line per attack at the
    end, ``held`` or ``broken``. The same tests run in ``integration`` too."""
    _install_all(session)
    session.run("pytest", "tests", "-q", "-m", "attack", "--attack-report", *session.posargs)


# The canary's quick subset: a test of each core feature in each client format x upstream cell
# (the retry back-offs of the error cells and the 6 MB session left out). Selected with -k
# from everything collected, so that the matrix shows the rest as "not run".
CANARY_QUICK = ("test_claude_code_matrix and not throttled or test_claude_code_formats or "
                "test_single_text_turn or test_tool_loop_keeps or test_count_tokens_is_forwarded "
                "or test_routed_to_openai or test_billing_cost_equals")
CANARY_DOC = ROOT / "docs" / "claude-code-compatibility.md"


@nox.session(python="3.11")
def canary(session: nox.Session) -> None:
    """The Claude Code conformance tests (those marked ``cc_cell``) against the pinned Claude
    Code and npm's newest release, writing the compatibility matrix to
    docs/claude-code-compatibility.md; fails when a cell fails. ``-- --version
    latest|pinned|X.Y.Z`` tests one version; ``-- --quick`` the core cells of the latest
    release only, the matrix printed, not written. npm unreachable: the cached pinned
    version is tested instead, and the matrix says so. Other arguments go to pytest."""
    _canary(session, list(session.posargs))


@nox.session(name="canary-quick", python="3.11")
def canary_quick(session: nox.Session) -> None:
    """``nox -s canary -- --quick``, in CI: the latest Claude Code (or, npm unreachable, the
    cached pinned one) against one test of each core feature per matrix cell."""
    _canary(session, ["--quick", *session.posargs])


def _canary(session: nox.Session, args: list[str]) -> None:
    _install_all(session)
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    spec = None
    if "--version" in args:
        at = args.index("--version")
        if at + 1 == len(args):
            session.error("--version needs a value: latest, pinned or a version (2.1.331)")
        spec = args[at + 1]
        del args[at:at + 2]
    script = "tests/claude_code/cc_canary.py"
    if spec is not None:
        specs = [spec]
    elif quick:
        specs = ["latest"]
    else:
        # npm's latest may be the pinned release: then one run stands for both
        latest = (session.run("python", script, "resolve", "latest", silent=True) or "")
        pinned = session.run("python", script, "resolve", "pinned", silent=True) or ""
        same = latest.strip().splitlines()[-1:] == pinned.strip().splitlines()[-1:]
        specs = ["latest"] if same else ["pinned", "latest"]
    tmp = Path(session.create_tmp())
    runs, failed = [], []
    for version in specs:
        out = tmp / f"canary-{version}.json"
        out.unlink(missing_ok=True)
        subset = ["-k", CANARY_QUICK] if quick else []
        # exit 1 (tests failed) is the matrix's to show
        session.run("pytest", "tests/claude_code", *subset, "-q", "-m", "cc_cell",
                    "--claude-code-version", version, "--cc-matrix-json", str(out), *args,
                    success_codes=[0, 1])
        if not out.exists():  # pytest stopped before its session ended (a usage error)
            session.error(f"the {version} run wrote no matrix ({out})")
        runs.append(str(out))
        if any(cell["failed"] for cell in json.loads(out.read_text())["cells"].values()):
            failed.append(version)
    render = ["python", script, "render", *runs]
    if quick:
        session.run(*render, "--quick")
    else:
        session.run(*render, "--output", str(CANARY_DOC))
    if failed:
        session.error(f"Claude Code conformance failed for: {', '.join(failed)} (see the matrix)")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    _install_all(session)
    session.install("mypy>=1.10")
    session.run("mypy", "core/src", *[f"plugins/{p}/src" for p in PLUGINS])


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Throughput, latency and CPU per request: midway vs direct vs a plain aiohttp relay."""
    _install_all(session)
    session.install("tomli-w")
    if not shutil.which("wrk"):
        session.run("apt-get", "install", "-y", "wrk", external=True)
    session.run("python", "bench/run.py", *session.posargs)
    # the semantic cache lookup in-process on one core (p50 for a 256-token last turn)
    session.run("python", "bench/cache_lookup.py")


@nox.session(python="3.11")
def icount(session: nox.Session) -> None:
    """Instructions per request under callgrind (repeatable on a noisy machine): plain, midway,
    midway with an unobserved on_chunk; ``nox -s icount -- --baseline REF`` adds each target
    as of REF (midway@REF, stack@REF, ...).
    About 2-3 min a target (not part of CI). Every package is installed: the ``alone-*`` and
    ``stack`` targets load the plugins."""
    _install_all(session)
    session.install("tomli-w")
    if not shutil.which("valgrind"):
        session.run("apt-get", "install", "-y", "valgrind", external=True)
    session.run("python", "bench/icount.py", *session.posargs)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """Long soak, slow streams and 20 kill -9 cycles, then hypothesis with many examples
    (bounded, loopback only; not part of CI). ``nox -s soak -- --quick`` for a short run."""
    _install_all(session)
    session.run("python", "bench/soak.py", *session.posargs)
    quick = "--quick" in session.posargs
    session.run("pytest", "tests/test_hardening_fuzz.py", "-q",
                env={"HARDENING_FUZZ_EXAMPLES": "500" if quick else "5000"})


@nox.session(python="3.11")
def deploy(session: nox.Session) -> None:
    """The deployment files (deploy/): the image built and run read-only under podman, the
    compose stack with a replica killed under load, the Kubernetes manifests rendered and
    validated. About 3 min with the podman images cached (the Debian base is built once per
    machine, ~1 min); ``nox -s deploy -- --quick`` leaves out the compose stack (~1 min)."""
    _install_all(session)
    session.install("kubernetes-validate>=1.30", "podman-compose>=1.1", "pyyaml")
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:  # a fresh machine may have no package lists yet
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "podman", "runc", "debootstrap", external=True)
    quick = "--quick" in session.posargs
    args = [a for a in session.posargs if a != "--quick"]
    paths = (["deploy/tests/test_kubernetes.py", "deploy/tests/test_container.py"] if quick
             else ["deploy/tests"])
    session.run("pytest", *paths, "-q", *args)


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """Wheels of core and every plugin into dist/ (``pip install dist/*.whl`` anywhere)."""
    session.install("build")
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    for package in PACKAGES:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(dist), _path(package))
