"""Import resolution: which workspace files an import statement refers to.

Offers `Layout` (the set of indexed paths plus what resolution needs: directories, Go modules from
go.mod, file names) and `resolve_imports(layout, path, language, imports)`.

Per language:
- Python: `import a.b`, `from a.b import c` (c may be a submodule), relative `from ..x import y`;
  packages with `__init__.py`, namespace packages; roots are the workspace, `src/` and the parent of
  every top-level package (so src/ and nested project layouts work).
- JavaScript/TypeScript: relative and root-absolute specifiers, with extension and `index.*`
  resolution and `./x.js` -> `x.ts` (TypeScript's ESM style). Bare package names are not resolved.
- Go: the module path of the nearest matching go.mod, then every non-test .go file of the package
  directory.
- Rust: `mod x;` -> x.rs or x/mod.rs next to (or under) the declaring file; `use crate::a::b`,
  `self::`, `super::` -> the deepest module file that exists.
- Java: `a.b.C` -> a file ending in a/b/C.java (any source root); `a.b.*` -> that package's files;
  static and nested-class imports fall back to the enclosing class file.
- C/C++: `#include "x.h"` relative to the including file, then the include dirs (configured dirs,
  every directory named `include`, the workspace root); `<x.h>` only the include dirs.

Paths are relative to the workspace root with forward slashes.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

from .symbols import Import

_JS_EXTS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts")
_GO_MODULE = re.compile(r"^\s*module\s+(\S+)", re.MULTILINE)


def go_module_path(go_mod_text: str) -> str | None:
    """The `module` path declared in a go.mod file."""
    match = _GO_MODULE.search(go_mod_text)
    return match.group(1).strip('"') if match else None


def _join(*parts: str) -> str:
    """Normalised posix join; '' for the workspace root."""
    kept = [p for p in parts if p]
    joined = posixpath.normpath(posixpath.join(*kept)) if kept else ""
    return "" if joined == "." else joined


class Layout:
    """The workspace's indexed paths and the lookups resolution needs; updated per path.

    Not thread-safe by itself: `RepoIndex` serialises access with its lock.
    """

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.dirs: dict[str, set[str]] = {}  # directory -> names of the indexed files in it
        self.by_name: dict[str, set[str]] = {}  # file name -> paths
        self.go_modules: dict[str, str] = {}  # directory of a go.mod -> module path
        self._python_roots: tuple[str, ...] | None = None
        self._include_dirs: tuple[str, ...] | None = None

    def add(self, path: str) -> None:
        if path in self.files:
            return
        self.files.add(path)
        d, name = posixpath.split(path)
        self.dirs.setdefault(d, set()).add(name)
        self.by_name.setdefault(name, set()).add(path)
        self._python_roots = self._include_dirs = None

    def remove(self, path: str) -> None:
        if path not in self.files:
            return
        self.files.discard(path)
        d, name = posixpath.split(path)
        for table, key, value in ((self.dirs, d, name), (self.by_name, name, path)):
            members = table.get(key)
            if members is not None:
                members.discard(value)
                if not members:
                    del table[key]
        self._python_roots = self._include_dirs = None

    def set_go_module(self, directory: str, module: str | None) -> None:
        if module:
            self.go_modules[directory] = module
        else:
            self.go_modules.pop(directory, None)

    def python_roots(self) -> tuple[str, ...]:
        """'' and 'src' and the parent directory of each top-level package."""
        if self._python_roots is None:
            roots = {""}
            if "src" in self.dirs or any(d.startswith("src/") for d in self.dirs):
                roots.add("src")
            for init in self.by_name.get("__init__.py", ()):
                package = posixpath.dirname(init)
                parent = posixpath.dirname(package)
                if _join(parent, "__init__.py") not in self.files:
                    roots.add(parent)
            self._python_roots = tuple(sorted(roots))
        return self._python_roots

    def include_dirs(self) -> tuple[str, ...]:
        """Every directory named `include`, then the workspace root."""
        if self._include_dirs is None:
            found = set()
            for d in self.dirs:  # an `include` dir may hold only subdirectories
                parts = d.split("/")
                if "include" in parts:
                    found.add("/".join(parts[: parts.index("include") + 1]))
            self._include_dirs = (*sorted(found), "")
        return self._include_dirs


def resolve_imports(
    layout: Layout,
    path: str,
    language: str,
    imports: Iterable[Import],
    include_dirs: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """Workspace files the imports of `path` refer to, in import order, without duplicates or `path`."""
    resolver = _RESOLVERS.get(language)
    if resolver is None:
        return ()
    seen = {path}
    out = []
    for imp in imports:
        targets = (
            resolver(layout, path, imp, include_dirs)
            if resolver is _resolve_c
            else resolver(layout, path, imp)
        )
        for target in targets:
            if target not in seen:
                seen.add(target)
                out.append(target)
    return tuple(out)


# --- Python -------------------------------------------------------------------------------------


def _py_module(layout: Layout, base: str, dotted: str) -> str | None:
    rel = _join(base, dotted.replace(".", "/"))
    if rel in ("", "."):
        rel = ""
    for cand in (f"{rel}.py", f"{rel}.pyi", _join(rel, "__init__.py"), _join(rel, "__init__.pyi")):
        if cand in layout.files and not cand.startswith("."):
            return cand
    return None


def _python_bases(layout: Layout, path: str) -> list[str]:
    roots = layout.python_roots()
    own = sorted((r for r in roots if r == "" or path.startswith(r + "/")), key=len, reverse=True)
    return [*own, *(r for r in roots if r not in own)]


def _resolve_python(layout: Layout, path: str, imp: Import) -> list[str]:
    module = imp.module
    if imp.kind != "from":
        for base in _python_bases(layout, path) + [posixpath.dirname(path)]:
            parts = module.split(".")
            for i in range(len(parts), 0, -1):  # deepest module that exists
                found = _py_module(layout, base, ".".join(parts[:i]))
                if found:
                    return [found]
        return []
    level = len(module) - len(module.lstrip("."))
    rest = module[level:]
    if level:
        base = posixpath.dirname(path)
        for _ in range(level - 1):
            base = posixpath.dirname(base)
        bases = [base]
    else:
        bases = _python_bases(layout, path) + [posixpath.dirname(path)]
    names = [n for n in imp.names if n != "*"]
    for base in bases:
        found = []
        submodules = 0
        for name in names:
            sub = _py_module(layout, base, f"{rest}.{name}" if rest else name)
            if sub:
                found.append(sub)
                submodules += 1
        if submodules < len(names) or not names:
            parent = _py_module(layout, base, rest) if rest or level else None
            if parent:
                found.insert(0, parent)
        if found:
            return found
    return []


# --- JavaScript / TypeScript --------------------------------------------------------------------


def _resolve_js(layout: Layout, path: str, imp: Import) -> list[str]:
    spec = imp.module.split("?", 1)[0]
    if spec.startswith("."):
        base = _join(posixpath.dirname(path), spec)
    elif spec.startswith("/"):
        base = _join(spec.lstrip("/"))
    else:
        return []
    if base.startswith(".."):
        return []
    cands = [base, *(base + e for e in _JS_EXTS), *(_join(base, "index" + e) for e in _JS_EXTS)]
    stem, ext = posixpath.splitext(base)
    if ext in (".js", ".jsx", ".mjs", ".cjs"):
        cands += [stem + e for e in (".ts", ".tsx", ".mts", ".cts", ".d.ts")]
    return next(([c] for c in cands if c in layout.files), [])


# --- Go -----------------------------------------------------------------------------------------


def _resolve_go(layout: Layout, path: str, imp: Import) -> list[str]:
    best: tuple[str, str] | None = None
    for directory, module in layout.go_modules.items():
        if imp.module == module or imp.module.startswith(module + "/"):
            if best is None or len(module) > len(best[1]):
                best = (directory, module)
    if best is None:
        return []
    package_dir = _join(best[0], imp.module[len(best[1]) :].lstrip("/"))
    names = layout.dirs.get(package_dir, ())
    return [_join(package_dir, n) for n in sorted(names) if n.endswith(".go") and not n.endswith("_test.go")]


# --- Rust ---------------------------------------------------------------------------------------


def _rust_module_dir(path: str) -> str:
    directory, name = posixpath.split(path)
    return directory if name in ("mod.rs", "lib.rs", "main.rs") else _join(directory, name[:-3])


def _rust_crate_root(layout: Layout, path: str) -> str:
    directory = posixpath.dirname(path)
    while True:
        names = layout.dirs.get(directory, ())
        if "lib.rs" in names or "main.rs" in names:
            return directory
        if not directory:
            return posixpath.dirname(path)
        directory = posixpath.dirname(directory)


def _rust_file(layout: Layout, base: str, segments: list[str]) -> str | None:
    rel = _join(base, *segments)
    for cand in (f"{rel}.rs", _join(rel, "mod.rs")):
        if cand in layout.files:
            return cand
    return None


def _rust_dir_module(layout: Layout, directory: str) -> str | None:
    for cand in (
        f"{directory}.rs",
        _join(directory, "mod.rs"),
        _join(directory, "lib.rs"),
        _join(directory, "main.rs"),
    ):
        if cand in layout.files:
            return cand
    return None


def _resolve_rust(layout: Layout, path: str, imp: Import) -> list[str]:
    if imp.kind == "mod":
        found = _rust_file(layout, _rust_module_dir(path), [imp.module])
        return [found] if found else []
    segments = [s for s in imp.module.split("::") if s]
    if not segments:
        return []
    head = segments[0]
    if head == "crate":
        bases, segments = [_rust_crate_root(layout, path)], segments[1:]
    elif head in ("self", "super"):
        base = _rust_module_dir(path)
        if head == "self":
            segments = segments[1:]
        while segments and segments[0] == "super":
            base = posixpath.dirname(base)
            segments = segments[1:]
        bases = [base]
    else:  # a module in scope or another crate: try the current module, then the crate root
        bases = [_rust_module_dir(path), _rust_crate_root(layout, path)]
    for base in bases:
        for i in range(len(segments), 0, -1):
            found = _rust_file(layout, base, segments[:i])
            if found:
                return [found]
    if head in ("crate", "self", "super"):
        found = _rust_dir_module(layout, bases[0])
        return [found] if found else []
    return []


# --- Java ---------------------------------------------------------------------------------------


def _resolve_java(layout: Layout, path: str, imp: Import) -> list[str]:
    name = imp.module
    if name.endswith(".*"):
        package = name[:-2].replace(".", "/")
        dirs = sorted(d for d in layout.dirs if d == package or d.endswith("/" + package))
        if dirs:
            names = sorted(n for n in layout.dirs[dirs[0]] if n.endswith(".java"))
            return [_join(dirs[0], n) for n in names]
        name = name[:-2]  # `import static a.B.*`: the class B
    segments = name.split(".")
    for i in range(len(segments), max(len(segments) - 3, 0), -1):  # drop members / nested classes
        rel = "/".join(segments[:i]) + ".java"
        matches = sorted(
            p for p in layout.by_name.get(segments[i - 1] + ".java", ()) if p == rel or p.endswith("/" + rel)
        )
        if matches:
            return matches[:1]
    return []


# --- C / C++ ------------------------------------------------------------------------------------


def _resolve_c(layout: Layout, path: str, imp: Import, include_dirs: tuple[str, ...]) -> list[str]:
    dirs = [posixpath.dirname(path)] if imp.kind == "include" else []
    dirs += [*include_dirs, *layout.include_dirs()]
    for directory in dirs:
        cand = _join(directory, imp.module)
        if cand in layout.files:
            return [cand]
    return []


_RESOLVERS = {
    "python": _resolve_python,
    "javascript": _resolve_js,
    "typescript": _resolve_js,
    "tsx": _resolve_js,
    "go": _resolve_go,
    "rust": _resolve_rust,
    "java": _resolve_java,
    "c": _resolve_c,
    "cpp": _resolve_c,
}
