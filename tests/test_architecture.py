"""The layers of docs/architecture.md: every import in diffjax/ goes down, never up, and
the sibling packages (train and evaluation; models and data) never import each other.

Checked on the source (every ``import`` statement, including those inside functions), so
a lazy import cannot hide an upward dependency.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "diffjax"

# Lower numbers are lower layers; a module may import its own layer's package and any lower layer.
LAYERS = {
    "errors": 0,
    "files": 0,
    "diffusion": 1,
    "models": 2,
    "data": 2,
    "runtime": 3,
    "train": 4,
    "evaluation": 4,
    "run": 5,
}


def package_of(module: str) -> str:
    """'diffjax.train.loop' -> 'train'; the top-level ``diffjax/__init__.py`` re-exports the math."""
    parts = module.split(".")
    return "diffusion" if len(parts) == 1 else parts[1]


def diffjax_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every diffjax import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "diffjax":
            names = [node.module] if node.module != "diffjax" else [f"diffjax.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "diffjax"]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {path.relative_to(PACKAGE).parts[0] for path in MODULES if len(path.relative_to(PACKAGE).parts) > 1}
    top_level = {path.stem for path in MODULES if len(path.relative_to(PACKAGE).parts) == 1} - {"__init__"}
    assert packages | top_level == set(LAYERS), "a new package needs a layer here and in docs/architecture.md"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(path):
    relative = path.relative_to(PACKAGE).with_suffix("")
    own = "diffusion" if relative.parts == ("__init__",) else relative.parts[0]
    problems = []
    for line, module in diffjax_imports(path):
        other = package_of(module)
        assert other in LAYERS, f"{path}:{line} imports {module}, which has no layer"
        if other == own:
            continue
        if LAYERS[other] >= LAYERS[own]:
            problems.append(f"{path.relative_to(PACKAGE)}:{line} ({own}, layer {LAYERS[own]}) imports {module} "
                            f"({other}, layer {LAYERS[other]})")
    assert not problems, "\n".join(problems)
