"""The library's rooms import one way (docs/architecture.md, "The library"): every module under latent_atlas/
imports only its own package and packages of lower layers, read from its source (lazy imports inside
functions count too); no module needs scrolling past MAX_LINES; the library imports neither Dagster nor the
project's Dagster side."""

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "latent_atlas"

# Lowest first. A package imports its own modules and those of lower layers; packages of one layer
# import none of each other.
LAYERS = [
    ("compute",),
    ("data",),
    ("clustering",),
    ("analysis", "steering", "hierarchy"),
    ("labels",),
    ("reading",),
    ("report",),
]
LAYER = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
MAX_LINES = 450
# Never imported by the library: Dagster, and the packages that wrap the library for it.
FORBIDDEN = ("dagster", "assets", "resources", "io_managers", "orchestration")


def _modules() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; `from a import b` gives a.b when b is a
    module of this checkout, else a."""
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.append((node.lineno, submodule if _exists(submodule) else module))
    return found


def _exists(module: str) -> bool:
    path = LIBRARY.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _package(module: str) -> str | None:
    """The room of a latent_atlas module name (latent_atlas.data.chunks -> data); None outside the library."""
    parts = module.split(".")
    return parts[1] if parts[0] == "latent_atlas" and len(parts) > 1 else None


def test_every_module_lives_in_a_room_of_the_layer_order():
    rooms = {p.name for p in LIBRARY.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set(LAYER), "place each package of latent_atlas/ in LAYERS (and in docs/architecture.md)"
    loose = [p.name for p in LIBRARY.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside any package: {loose}"


def test_imports_run_down_the_layers():
    wrong = []
    for path in _modules():
        own = _package(_name(path))
        for line, module in _imports(path):
            target = _package(module)
            where = f"{path.relative_to(LIBRARY.parent)}:{line} imports {module}"
            if module.split(".")[0] != "latent_atlas":
                continue
            if not _exists(module):
                wrong.append(f"{where}, which is not a module of latent_atlas/")
            elif target is None or (own is not None and target != own and LAYER[target] >= LAYER[own]):
                wrong.append(f"{where}: {own} (layer {LAYER.get(own)}) may import only layers below it")
    assert wrong == [], "\n".join(wrong)


def test_the_library_imports_neither_dagster_nor_the_project_around_it():
    wrong = [f"{path.relative_to(LIBRARY.parent)}:{line} imports {module}"
             for path in _modules() for line, module in _imports(path)
             if module.split(".")[0] in FORBIDDEN or module.startswith("dagster_")]
    assert wrong == [], "\n".join(wrong)


def test_no_module_needs_scrolling():
    long = {str(p.relative_to(LIBRARY.parent)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split by concept, not in halves: modules over {MAX_LINES} lines {long}"
