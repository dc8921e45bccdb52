"""Helpers the fixture drivers (``make_*_fixtures.py``) share to run official code outside the project:
stand-in modules, loading an official file by path, and the checkout's commit. Used only when making
fixtures (the drivers import it as a sibling module: ``python tests/reference/make_X_fixtures.py``)."""

import importlib.util
import subprocess
import sys
import types


def stub_module(name, **attrs):
    """Register an empty module ``name`` (with ``attrs``) in ``sys.modules``: a shim for an import the
    official code needs but the fixture does not use."""
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def load_by_path(name, path):
    """Execute the official source file ``path`` as module ``name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def checkout_commit(path, given=None):
    """``given`` if set, else the git commit of the checkout at ``path``, else "unknown" (an archive)."""
    if given:
        return given
    try:
        return subprocess.check_output(["git", "-C", str(path), "rev-parse", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
