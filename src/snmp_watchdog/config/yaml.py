"""Read YAML into plain Python data and remember the line of every key and item.

Rules:

- The file is composed with PyYAML's safe loader (the libyaml one when it is
  installed), never constructed with arbitrary tags.
- Every mapping key and every sequence item gets an entry in ``lines``: its
  path (``("services", 2, "port")``) maps to its 1-based line. The document
  itself is ``()`` on line 1.
- A key written twice in one mapping is a problem (YAML alone would silently
  keep the last one); the first one is kept. Keys are taken as written: ``no:``
  is the key ``"no"``, not ``False``.
- Merge keys (``<<: *anchor``) work as in YAML 1.1: keys written in the mapping
  win over merged ones, earlier merged mappings over later ones.
- Under a key named in ``text_keys``, a plain scalar that YAML would read as a
  number or a boolean is kept as the text written (``name: 007`` is ``"007"``,
  ``community: yes`` is ``"yes"``, ``engine_id: 0x8000...`` keeps its leading
  zeros). This applies to the items of a list under such a key too. ``null``
  stays ``None``.
- A syntax error stops everything: it is raised as :class:`YamlSyntaxError`
  with its line. Other problems are collected and parsing goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

PathKey = str | int
Path = tuple[PathKey, ...]

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_NUMBERISH = frozenset((_INT, _FLOAT, _BOOL))

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader with scalar tag resolution memoised per document.

    Resolving a plain scalar runs a list of regexes; a config repeats the same
    keys and values thousands of times, so a cache makes composing much cheaper.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            if not implicit[0]:  # quoted or block text: always a string here
                return _STR
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)
            return tag
        return _SEQ if kind is SequenceNode else _MAP

    # The safe loader has no path resolvers; these would only cost a call per node.
    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


class YamlSyntaxError(Exception):
    """The text is not YAML; nothing after the error can be trusted."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class YamlProblem:
    line: int
    path: Path
    message: str


@dataclass(slots=True)
class Document:
    """The data of a YAML file and where each part of it was written."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    problems: list[YamlProblem] = field(default_factory=list)

    def line_of(self, path: Path) -> int:
        """The line of ``path``, or of its nearest written ancestor."""
        lines = self.lines
        for end in range(len(path), -1, -1):
            line = lines.get(path[:end])
            if line is not None:
                return line
        return 1


def parse(text: str, text_keys: frozenset[str] = frozenset()) -> Document:
    """Parse one YAML document. An empty document has ``data`` None."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise YamlSyntaxError(*_describe(exc)) from None
    except ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlSyntaxError(
            line, f"character #x{char:04x} is not allowed in YAML ({exc.reason})"
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(None, str(exc).splitlines()[0]) from None
    doc = Document(None, {(): 1})
    if root is not None:
        doc.data = _Walker(doc, text_keys).node(root, (), as_text=False)
    return doc


def _describe(exc: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    """Line and message of a syntax error, without quoting the file's text."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    message = exc.problem or exc.context or "not valid YAML"
    if exc.problem and exc.context:
        context_line = exc.context_mark.line + 1 if exc.context_mark is not None else None
        if context_line is not None and context_line != line:
            message = f"{message} ({exc.context} that starts on line {context_line})"
        else:
            message = f"{message} ({exc.context})"
    return line, message


class _Walker:
    def __init__(self, doc: Document, text_keys: frozenset[str]) -> None:
        self.doc = doc
        self.lines = doc.lines
        self.text_keys = text_keys
        self.constructor = SafeConstructor()
        self.active: set[int] = set()

    def problem(self, node: Node, path: Path, message: str) -> None:
        self.doc.problems.append(YamlProblem(node.start_mark.line + 1, path, message))

    def node(self, node: Node, path: Path, as_text: bool) -> Any:
        if isinstance(node, ScalarNode):
            return self.scalar(node, path, as_text)
        if id(node) in self.active:
            self.problem(node, path, "an alias refers to the collection that contains it")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                items = []
                lines = self.lines
                for index, item in enumerate(node.value):
                    item_path = (*path, index)
                    lines[item_path] = item.start_mark.line + 1
                    items.append(self.node(item, item_path, as_text))
                return items
            assert isinstance(node, MappingNode)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: ScalarNode, path: Path, as_text: bool) -> Any:
        tag = node.tag
        if tag == _STR:
            return node.value
        if tag == _NULL:
            return None
        if as_text and tag in _NUMBERISH:
            return node.value
        try:
            if tag == _INT:
                return self.constructor.construct_yaml_int(node)
            if tag == _BOOL:
                return self.constructor.construct_yaml_bool(node)
            if tag == _FLOAT:
                return self.constructor.construct_yaml_float(node)
            return self.constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            self.problem(node, path, exc.problem or "cannot read this value")
            return None

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merges: list[Node] = []
        lines = self.lines
        text_keys = self.text_keys
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, path, "a key must be a name, not a list or a mapping")
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in first_line:
                message = f"duplicate key (first on line {first_line[key]})"
                self.problem(key_node, (*path, key), message)
                continue
            first_line[key] = line
            key_path = (*path, key)
            lines[key_path] = line
            if value_node.tag == _STR and isinstance(value_node, ScalarNode):
                out[key] = value_node.value  # the common case, without a call
            else:
                out[key] = self.node(value_node, key_path, key in text_keys)
        for merge in merges:
            self.merge(merge, path, out)
        return out

    def merge(self, node: Node, path: Path, out: dict[str, Any]) -> None:
        """Add the keys of a merged mapping (or list of them) that ``out`` lacks."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.problem(node, path, "'<<' merges a mapping or a list of mappings")
                continue
            saved = self.lines
            self.lines = {}
            try:
                merged = self.mapping(source, path)
            finally:
                merged_lines, self.lines = self.lines, saved
            depth = len(path)
            for merged_path, line in merged_lines.items():
                if merged_path[depth] not in out:
                    saved[merged_path] = line
            for key, value in merged.items():
                out.setdefault(key, value)
