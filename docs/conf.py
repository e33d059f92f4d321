"""Sphinx configuration for the pami-lightning documentation.

Build (what ``.ci/run`` runs; warnings are errors, ``-n`` makes every unresolved cross-reference one)::

    python -m pip install -e ".[docs]"
    python -m sphinx -W -n --keep-going -b html docs docs/_build/html

Two pieces are generated at every build, under ``docs/_generated/`` (git-ignored), so neither can go
stale:

- the API reference: one page per public module, one entry per name in the module's ``__all__``
  (a name that is re-exported from a module documented earlier links to that entry instead of
  being documented twice);
- the examples gallery: ``examples/explain_image.py --fast`` runs, and its PNGs and its printout
  are embedded in the gallery page.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
sys.path.insert(0, str(ROOT))

import pami_lightning  # noqa: E402

project = "pami-lightning"
author = "pami-lightning contributors"
copyright = "pami-lightning contributors"
release = version = pami_lightning.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
html_theme = "furo"
html_title = f"pami-lightning {release}"
exclude_patterns = ["_build"]
templates_path: list[str] = []

napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # Lightning's hook docstrings are Lightning's docs, not ours
napoleon_use_ivar = True  # "Attributes:" as fields: no second entry beside a ``#:``-documented attribute
napoleon_custom_sections = [("Keys", "params_style")]  # TypedDict docstrings list their keys
add_module_names = False

# -n (nitpicky): every reference to a name of this package must resolve. Names of other libraries
# (torch, Lightning, numpy, typing, ...) are not documented here and are not checked.
nitpicky = True
# A reference to a name of this package that exists but is not public (a private helper type in an
# annotation, an internal module) is rendered as code without a link; one that does not exist fails.
nitpick_ignore_regex = [
    (r"py:.*", r"(?!pami_lightning\b).*"),
]

# --------------------------------------------------------------------------------------------------
# API reference: generated from each module's __all__.

#: The public modules, in the order they are documented (the first to document a name owns it).
API_MODULES = [
    ("pami_lightning", "Top level: engine, strategies, maskers, scores, metrics, callback, evaluation, data"),
    ("pami_lightning.partitions", "Partitions: strategies, segmenters, the label cache, the reference's byte conversions"),
    ("pami_lightning.callbacks", "Callback options and helpers"),
    ("pami_lightning.metrics", "Metrics (torchmetrics)"),
    ("pami_lightning.metrics.functional", "Functional metrics"),
    ("pami_lightning.data", "Datasets"),
    ("pami_lightning.evaluation", "Dataset-scale evaluation"),
    ("pami_lightning.visualize", "Pictures: overlays, colour maps and bars, grids, timelines, token highlighting"),
]


def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if inspect.isroutine(inspect.unwrap(obj)):  # functools.lru_cache wrappers too
        return "function"
    return "data"


def _constant_doc(modname: str, name: str, obj: Any) -> list[str]:
    """A constant's ``#:`` comment, read from the module that assigns it: autodoc reads only the named
    module's source, and would show a re-exported dict's ``dict`` docstring instead."""
    from sphinx.pycode import ModuleAnalyzer

    package = modname.split(".")[0]
    for source in sorted(m for m in sys.modules if m == package or m.startswith(package + ".")):
        if getattr(sys.modules[source], name, None) is obj:
            doc = ModuleAnalyzer.for_module(source).find_attr_docs().get(("", name))
            if doc:
                return [line for line in doc if line.strip()]
    raise ValueError(f"{modname}.{name} is public but has no #: comment where it is assigned")


def _write_api() -> None:
    out = GENERATED / "api"
    out.mkdir(parents=True, exist_ok=True)
    owner: dict[int, str] = {}  # id(object) -> the full name it is documented under
    pages = []
    for modname, title in API_MODULES:
        module = importlib.import_module(modname)
        names = list(module.__all__)
        lines = [f"``{modname}``", "=" * (len(modname) + 4), "", f".. module:: {modname}", "", title + ".", ""]
        doc = inspect.getdoc(module)
        if doc and modname != "pami_lightning":
            lines += [f".. automodule:: {modname}", "   :no-index:", ""]
        seen_elsewhere = []
        for name in names:
            obj = getattr(module, name)  # a stale name in __all__ fails the build here
            kind = _kind(obj)
            key = id(obj)
            if kind == "module":
                seen_elsewhere.append(f"- :mod:`{obj.__name__}`")
                continue
            if kind != "data" and key in owner:
                seen_elsewhere.append(f"- ``{name}``: :py:{'class' if kind == 'class' else 'func'}:`{owner[key]}`")
                continue
            if kind == "class":
                lines += [f".. autoclass:: {modname}::{name}", "   :members:", ""]
            elif kind == "function":
                lines += [f".. autofunction:: {modname}::{name}", ""]
            else:
                lines += [f".. py:data:: {name}", *([f"   :value: {obj!r}"] if isinstance(obj, (int, float, str)) else []), ""]
                lines += [f"   {line}" for line in _constant_doc(modname, name, obj)] + [""]
            if kind != "data":
                owner[key] = f"{modname}.{name}"
        if seen_elsewhere:
            lines += ["Also exported here", "------------------", "", "Documented under another name:", "", *seen_elsewhere, ""]
        (out / f"{modname}.rst").write_text("\n".join(lines))
        pages.append(modname)
    _ALIASES.update(owner)


#: id(object) -> documented full name; used to resolve references to an object through another path
#: (``pami_lightning.callbacks.PAMICallback`` -> ``pami_lightning.PAMICallback``).
_ALIASES: dict[int, str] = {}


def _resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("pami_lightning"):
        # a short name relative to the current module (``:class:`Results```)
        modname = node.get("py:module")
        if not modname:
            return None
        target = f"{modname}.{target}"
    obj: Any = None
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        break
    if obj is None:
        return None
    canonical = _ALIASES.get(id(obj))
    if canonical is None and hasattr(obj, "__qualname__") and "." in getattr(obj, "__qualname__", ""):
        # a method or attribute of a documented class reached through an alias
        cls_name, _, member = target.rpartition(".")
        try:
            cls_obj = _import_path(cls_name)
        except Exception:
            return None
        if id(cls_obj) in _ALIASES:
            canonical = f"{_ALIASES[id(cls_obj)]}.{member}"
    if canonical is not None and canonical != target:
        domain = env.get_domain("py")
        resolved = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode)
        if resolved is not None:
            return resolved
    # it exists in the code but has no page: code without a link (a name that does not exist warns)
    return contnode


def _import_path(path: str) -> Any:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


# --------------------------------------------------------------------------------------------------
# Examples gallery: run the example, embed what it writes.


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _write_gallery() -> None:
    out = GENERATED / "gallery"
    out.mkdir(parents=True, exist_ok=True)
    pictures = out / "explain_image"
    pictures.mkdir(exist_ok=True)
    for old in pictures.glob("*.png"):
        old.unlink()
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "explain_image.py"), "--fast", "--out-dir", str(pictures.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if run.returncode != 0:
        raise RuntimeError(f"examples/explain_image.py --fast failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    seconds = time.perf_counter() - start
    (pictures / "output.txt").write_text(run.stdout)
    pngs = sorted(p.name for p in pictures.glob("*.png"))
    if "grid.png" not in pngs:
        raise RuntimeError(f"examples/explain_image.py wrote no grid.png (wrote {pngs})")

    lines = [
        "Explain one image (``explain_image.py``)",
        "========================================",
        "",
        f"Generated when these docs were built: ``python examples/explain_image.py --fast`` ran in {seconds:.0f} s "
        "and wrote the pictures below (96 px, coarse windows; a full run, without ``--fast``, uses a 128 px "
        "picture, finer windows and the second run).",
        "",
        ".. image:: explain_image/grid.png",
        "   :alt: the painted input and the PAMI maps of the sliding-window and superpixel strategies",
        "   :width: 100%",
        "",
        "What it printed:",
        "",
        ".. literalinclude:: explain_image/output.txt",
        "   :language: text",
        "",
        "The pictures one by one",
        "-----------------------",
        "",
    ]
    for name in pngs:
        if name == "grid.png":
            continue
        lines += [f"``{name}``", "", f".. image:: explain_image/{name}", f"   :alt: {name}", "   :width: 288px", ""]
    lines += [
        "About the example",
        "-----------------",
        "",
        _docstring(ROOT / "examples" / "explain_image.py"),
        "",
        "The source",
        "----------",
        "",
        ".. literalinclude:: ../../../examples/explain_image.py",
        "   :language: python",
        "",
    ]
    (out / "explain_image.rst").write_text("\n".join(lines))

    # the index: every example, with the first line of its docstring
    index = [
        "Examples gallery",
        "================",
        "",
        "Every script in ``examples/``. The pages of the gallery are generated when the docs build: the example runs and its pictures are embedded.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        "   explain_image",
        "",
        "All examples",
        "------------",
        "",
    ]
    for path in sorted((ROOT / "examples").glob("*.py")):
        first = _docstring(path).strip().splitlines()[0] if _docstring(path).strip() else ""
        index += [f"- ``examples/{path.name}``: {first}"]
    index += [""]
    (out / "index.rst").write_text("\n".join(index))


def _write_cli() -> None:
    out = GENERATED / "cli"
    out.mkdir(parents=True, exist_ok=True)
    for name, module in (("pami-explain", "pami_lightning.cli"), ("pami-evaluate", "pami_lightning.evaluate_cli")):
        run = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
        if run.returncode != 0:
            raise RuntimeError(f"{name} --help failed:\n{run.stderr}")
        (out / f"{name}.txt").write_text(run.stdout)


def _generate(app: Any) -> None:
    _write_api()
    _write_cli()
    _write_gallery()


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _generate)
    app.connect("missing-reference", _resolve_alias)
    return {"parallel_read_safe": True}
