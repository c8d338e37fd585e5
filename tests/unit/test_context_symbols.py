"""Definitions, imports and outlines per language (mellum_lsp.context.languages / symbols)."""

from __future__ import annotations

import pytest

from mellum_lsp.context.languages import LANGUAGES, LanguageRegistry, language_for_path, normalize_language
from mellum_lsp.context.symbols import Import, extract_symbols, render_outline


@pytest.fixture(scope="module")
def registry() -> LanguageRegistry:
    return LanguageRegistry()


def _defs(registry: LanguageRegistry, language: str, source: str) -> set[tuple[str, str, str | None]]:
    definitions, _ = extract_symbols(registry, language, source.encode())
    return {(d.name, d.kind, d.container) for d in definitions}


def _imports(
    registry: LanguageRegistry, language: str, source: str
) -> list[tuple[str, tuple[str, ...], str]]:
    _, imports = extract_symbols(registry, language, source.encode())
    return [(i.module, i.names, i.kind) for i in imports]


DEFINITIONS = {
    "python": (
        """
@decorator
def top(a, b=1) -> int:
    return a

class Shape(Base):
    def area(self):
        def helper():
            pass
        return 0

type Alias = list[int]
""",
        {
            ("top", "function", None),
            ("Shape", "class", None),
            ("area", "method", "Shape"),
            ("helper", "function", "area"),  # nested functions are found, down to a depth
            ("Alias", "type", None),
        },
    ),
    "javascript": (
        """
function plain(a) { return a; }
function* gen() { yield 1; }
class Widget extends Base { render() { return null; } }
const arrow = (x) => x + 1;
var legacy = function () {};
const Klass = class {};
""",
        {
            ("plain", "function", None),
            ("gen", "function", None),
            ("Widget", "class", None),
            ("render", "method", "Widget"),
            ("arrow", "function", None),
            ("legacy", "function", None),
            ("Klass", "class", None),
        },
    ),
    "typescript": (
        """
export interface Point { x: number; norm(): number }
export type Id = string;
export enum Color { Red }
export abstract class Base { abstract area(): number; describe(): string { return ""; } }
export function make(p: Point): Base { return null as any; }
namespace Geo { export function inside() {} }
declare function external(a: number): void;
""",
        {
            ("Point", "interface", None),
            ("norm", "method", "Point"),
            ("Id", "type", None),
            ("Color", "enum", None),
            ("Base", "class", None),
            ("area", "method", "Base"),
            ("describe", "method", "Base"),
            ("make", "function", None),
            ("Geo", "module", None),
            ("inside", "function", "Geo"),
            ("external", "function", None),
        },
    ),
    "tsx": (
        "export function Badge(props: { n: number }) { return <b>{props.n}</b>; }\n",
        {("Badge", "function", None)},
    ),
    "go": (
        """
package geo
type Point struct { X, Y int }
type Shape interface { Area() float64 }
type ID = string
type Meters float64
func (p *Point) Move(dx int) { p.X += dx }
func New[T any](x T) T { return x }
""",
        {
            ("Point", "struct", None),
            ("Shape", "interface", None),
            ("ID", "type", None),
            ("Meters", "type", None),
            ("Move", "method", "Point"),
            ("New", "function", None),
        },
    ),
    "rust": (
        """
pub struct Circle { r: f64 }
enum Kind { A, B }
pub trait Area { fn area(&self) -> f64; }
impl Area for Circle { fn area(&self) -> f64 { self.r } }
impl<T> Wrapper<T> { pub fn new() -> Self { todo!() } }
type Pair = (i32, i32);
mod inner { pub fn f() {} }
macro_rules! square { ($x:expr) => { $x * $x }; }
fn free() {}
""",
        {
            ("Circle", "struct", None),
            ("Kind", "enum", None),
            ("Area", "trait", None),
            ("area", "method", "Area"),
            ("Circle", "impl", None),
            ("area", "method", "Circle"),
            ("Wrapper", "impl", None),
            ("new", "method", "Wrapper"),
            ("Pair", "type", None),
            ("inner", "module", None),
            ("f", "function", "inner"),
            ("square", "macro", None),
            ("free", "function", None),
        },
    ),
    "java": (
        """
package a.b;
public class App {
    public App() {}
    void run() {}
    interface Greeter { String greet(String n); }
    enum Mode { ON }
    record Pair(int a, int b) {}
}
@interface Marker {}
""",
        {
            ("App", "class", None),
            ("App", "method", "App"),
            ("run", "method", "App"),
            ("Greeter", "interface", "App"),
            ("greet", "method", "Greeter"),
            ("Mode", "enum", "App"),
            ("Pair", "class", "App"),
            ("Marker", "interface", None),
        },
    ),
    "c": (
        """
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define LIMIT 10
struct node { int v; };
typedef struct { int x; } point_t;
enum color { RED };
union value { int i; float f; };
int add(int a, int b) { return a + b; }
static char *name_of(int id);
int counter = 0;
""",
        {
            ("MAX", "macro", None),
            ("LIMIT", "macro", None),
            ("node", "struct", None),
            ("point_t", "type", None),
            ("color", "enum", None),
            ("value", "struct", None),
            ("add", "function", None),
            ("name_of", "function", None),
        },
    ),
    "cpp": (
        """
namespace geo {
class Shape {
 public:
  virtual double area() const = 0;
  Shape();
};
template <typename T> T biggest(T a, T b) { return a > b ? a : b; }
double Shape::perimeter() const { return 0; }
using Meters = double;
}
""",
        {
            ("geo", "namespace", None),
            ("Shape", "class", "geo"),
            ("area", "method", "Shape"),
            ("Shape", "method", "Shape"),
            ("biggest", "function", "geo"),
            ("perimeter", "method", "Shape"),
            ("Meters", "type", "geo"),
        },
    ),
}


@pytest.mark.parametrize("language", sorted(DEFINITIONS))
def test_definitions_per_language(registry: LanguageRegistry, language: str) -> None:
    source, expected = DEFINITIONS[language]
    assert _defs(registry, language, source) == expected


def test_definition_lines_and_signatures(registry: LanguageRegistry) -> None:
    source = "import os\n\n@cache\ndef total(items: list[int]) -> int:\n    return sum(items)\n"
    (d,), _ = extract_symbols(registry, "python", source.encode())
    assert (d.start_line, d.end_line) == (2, 4)  # decorators belong to the definition
    assert d.signature == "@cache\ndef total(items: list[int]) -> int:"
    (f,), _ = extract_symbols(registry, "go", b"package x\nfunc Add(a, b int) int {\n\treturn a + b\n}\n")
    assert (f.start_line, f.end_line, f.signature) == (1, 3, "func Add(a, b int) int")


IMPORTS = {
    "python": (
        "import os, a.b as ab\nfrom . import sibling\nfrom ..pkg.mod import x, y as z\nfrom m import *\n",
        [
            ("os", (), "import"),
            ("a.b", (), "import"),
            (".", ("sibling",), "from"),
            ("..pkg.mod", ("x", "y"), "from"),
            ("m", ("*",), "from"),
        ],
    ),
    "typescript": (
        'import { a } from "./a";\nimport * as b from "../b/index";\nexport { c } from "./c";\n'
        'const d = require("./d");\nconst e = await import("./e");\n',
        [
            ("./a", (), "import"),
            ("../b/index", (), "import"),
            ("./c", (), "import"),
            ("./d", (), "import"),
            ("./e", (), "import"),
        ],
    ),  # fmt: skip
    "go": (
        'package main\nimport (\n\t"fmt"\n\tu "example.com/m/util"\n)\n',
        [("fmt", (), "import"), ("example.com/m/util", (), "import")],
    ),
    "rust": (
        "mod util;\nmod inline { }\nuse crate::a::{b, c::{self, D as E}};\nuse super::x;\n",
        [
            ("util", (), "mod"),
            ("crate::a::b", (), "use"),
            ("crate::a::c", (), "use"),
            ("crate::a::c::D", (), "use"),
            ("super::x", (), "use"),
        ],
    ),  # fmt: skip
    "java": (
        "package p;\nimport a.b.C;\nimport static a.b.M.max;\nimport a.d.*;\n",
        [("a.b.C", (), "import"), ("a.b.M.max", (), "static"), ("a.d.*", (), "import")],
    ),
    "c": (
        '#include "local.h"\n#include <stdio.h>\n',
        [("local.h", (), "include"), ("stdio.h", (), "system")],
    ),
}


@pytest.mark.parametrize("language", sorted(IMPORTS))
def test_imports_per_language(registry: LanguageRegistry, language: str) -> None:
    source, expected = IMPORTS[language]
    assert _imports(registry, language, source) == expected


def test_imports_record_their_line(registry: LanguageRegistry) -> None:
    _, imports = extract_symbols(registry, "python", b"x = 1\nimport os\n")
    assert imports == (Import("os", (), 1, "import"),)


def test_outline_python(registry: LanguageRegistry) -> None:
    body = "\n".join(f"        v{i} = {i}" for i in range(20))
    source = (
        f"class Big:\n    def run(self):\n{body}\n        return 0\n\n    def stop(self):\n        pass\n"
    )
    definitions, _ = extract_symbols(registry, "python", source.encode())
    assert (
        render_outline(source, definitions, "python")
        == "class Big:\n    def run(self): ...\n    def stop(self): ..."
    )


def test_outline_braces_keeps_small_types_whole(registry: LanguageRegistry) -> None:
    source = "type Point struct {\n\tX int\n\tY int\n}\n\nfunc (p Point) Norm() int {\n\tx := p.X\n\treturn x * x\n}\n"
    definitions, _ = extract_symbols(registry, "go", source.encode())
    outline = render_outline(source, definitions, "go")
    assert outline == "type Point struct {\n\tX int\n\tY int\n}\nfunc (p Point) Norm() int { ... }"


def test_language_for_path() -> None:
    assert language_for_path("a/b.py") == "python"
    assert language_for_path("x.TSX") == "tsx"
    assert language_for_path("x.mjs") == "javascript"
    assert language_for_path("x.hpp") == "cpp"
    assert language_for_path("x.h", "int f(void);") == "c"
    assert language_for_path("x.h", "namespace a { class B; }") == "cpp"
    assert language_for_path("README.md") is None
    assert normalize_language("typescriptreact") == "tsx"
    assert normalize_language("Python") == "python"
    assert normalize_language("cobol") is None


def test_registry_is_lazy_and_complete() -> None:
    registry = LanguageRegistry()
    assert registry._languages == {}  # nothing loaded until asked
    for name in LANGUAGES:
        assert registry.query(name) is registry.query(name)
    assert set(registry._languages) == set(LANGUAGES)
    with pytest.raises(KeyError, match="unknown language 'cobol'"):
        registry.language("cobol")
