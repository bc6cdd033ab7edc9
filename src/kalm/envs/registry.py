"""What kalm needs from an environment (`EnvDefinition`) and how an env string finds one.

Every stage names its environment by a string: `"clevr"` or `"metaworld"` (built in),
`"package.module:ATTR"` or `"path/to/file.py:ATTR"` (a user's definition). The string given to
`kalm collect` is stored in the episode files and model metadata, so later stages find the same
environment from the data.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kalm.envs.base import EnvDefinition, EnvError

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = ["BUILTIN_ENVS", "EnvDefinition", "EnvError", "EnvLike", "env_kwargs", "find_env",
           "get_env", "make_env", "resolve_env"]

BUILTIN_ENVS = ("clevr", "metaworld")
_FORMS = "'clevr', 'metaworld', 'package.module:ATTR' or 'path/to/file.py:ATTR'"


# ---------------------------------------------------------------------- lookup
_CACHE: dict[tuple[str, str], EnvDefinition] = {}


def _load_module(target: str, name: str):
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise EnvError(f"env {name!r}: no such file {target!r} (relative paths are read "
                           f"from the current folder, {Path.cwd()})")
        mod_name = "kalm_user_env_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if mod_name in sys.modules:
            return sys.modules[mod_name], str(path)
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise EnvError(f"env {name!r}: importing {path} failed: "
                           f"{type(exc).__name__}: {exc}") from exc
        return module, str(path)
    try:
        return importlib.import_module(target), target
    except Exception as exc:
        raise EnvError(f"env {name!r}: cannot import module {target!r}: "
                       f"{type(exc).__name__}: {exc}") from exc


def get_env(name: str) -> EnvDefinition:
    """The EnvDefinition an env string names (built-in, module attribute or file attribute)."""
    if not isinstance(name, str) or not name:
        raise EnvError(f"env must be a non-empty string ({_FORMS}), got {name!r}")
    if name == "clevr":
        from kalm.envs.clevr.definition import CLEVR

        return CLEVR
    if name == "metaworld":
        from kalm.envs.metaworld.definition import METAWORLD

        return METAWORLD
    target, sep, attr = name.rpartition(":")
    if not sep or not target or not attr:
        raise EnvError(f"unknown env {name!r}; expected {_FORMS}")
    module, key = _load_module(target, name)
    if (key, attr) in _CACHE:
        return _CACHE[(key, attr)]
    if not hasattr(module, attr):
        found = sorted(k for k, v in vars(module).items() if isinstance(v, EnvDefinition))
        raise EnvError(f"env {name!r}: {target} has no attribute {attr!r}"
                       + (f" (EnvDefinition objects there: {', '.join(found)})" if found else ""))
    obj = getattr(module, attr)
    if not isinstance(obj, EnvDefinition):
        raise EnvError(f"env {name!r}: {target}:{attr} is a {type(obj).__name__}, expected a "
                       "kalm.envs.registry.EnvDefinition (see docs/custom-env.md)")
    _CACHE[(key, attr)] = obj
    return obj


EnvLike = str | EnvDefinition  # an env string, or a definition a caller already resolved


def resolve_env(env: EnvLike) -> EnvDefinition:
    """The definition itself, or the one an env string names: commands resolve once and pass
    the definition down; strings remain for what crosses a process or a file."""
    return env if isinstance(env, EnvDefinition) else get_env(env)


def find_env(name: str) -> EnvDefinition | None:
    """Like get_env, but None for a plain name kalm does not know (data from elsewhere)."""
    if ":" not in name and name not in BUILTIN_ENVS:
        return None
    return get_env(name)


def env_kwargs(definition: EnvDefinition, init_region: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `make`: `init_region` only for envs whose `make` accepts it."""
    if init_region is None:
        return {}
    try:
        params = inspect.signature(definition.make).parameters
    except (TypeError, ValueError):
        params = {}
    if "init_region" in params:
        return {"init_region": init_region}
    if init_region != "paper":
        raise ValueError(f"env {definition.name!r} has no init_region option "
                         f"(got {init_region!r}); it is a CLEVR setting")
    return {}


def make_env(definition: EnvDefinition, init_region: str | None = None) -> gym.Env:
    """Build the env (see env_kwargs for `init_region`)."""
    return definition.make(**env_kwargs(definition, init_region))
