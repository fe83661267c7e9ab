"""Read YAML into plain Python data and remember the line of every key and item.

Rules:

- The file is read with PyYAML's safe loader (the libyaml parser when it is
  installed), never constructed with arbitrary tags. The data is built from
  the parser's events as they come, without composing the file into nodes
  first (PyYAML's nodes and their marks take several times the memory of the
  data): only an anchored node, the value of a merge key and a skipped value
  are kept as small nodes, for the aliases and merges that refer to them.
  A file that cannot be composed is composed again by PyYAML to say why.
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
  with its line. Other problems are collected and parsing goes on: a value
  its explicit tag cannot read (``!!int x``) is a problem, and so is a merge
  of the mapping that contains it.
- What no configuration needs stops the reading as a syntax error would,
  rather than exhaust the stack or the memory: collections nested deeper than
  the interpreter can follow, and aliases that expand to more values than
  :data:`ALIAS_VALUES` or the length of the text, whichever is more (an alias
  of an alias of ... doubles the data at each step: a "billion laughs").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import Node, ScalarNode, SequenceNode
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
_RECURSIVE = "an alias refers to the collection that contains it"
_TOO_DEEP = "the collections are nested too deeply"

ALIAS_VALUES = 1_000_000
"""The values the aliases of a document may expand to, unless its text is longer."""

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


class Document:
    """The data of a YAML file and where each part of it was written.

    The lines are found when first asked for, by reading the text again: a
    file without problems never needs them, and a table of every key's line
    is as large as the data itself (10,000 services: 50,000 paths).
    """

    __slots__ = ("_lines", "_text", "_text_keys", "data", "problems")

    def __init__(
        self,
        data: Any,
        lines: dict[Path, int] | None = None,
        problems: list[YamlProblem] | None = None,
        *,
        text: str | None = None,
        text_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.data = data
        self.problems = problems if problems is not None else []
        self._lines = lines
        self._text = text
        self._text_keys = text_keys

    @property
    def lines(self) -> dict[Path, int]:
        """Every written path and its line (the document itself is ``()`` on line 1)."""
        if self._lines is None:
            if self._text is None:
                self._lines = {(): 1}
            else:
                self._lines = _read(self._text, self._text_keys, {(): 1}).lines
                self._text = None
        return self._lines

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
    return _read(text, text_keys, None)


def _read(text: str, text_keys: frozenset[str], lines: dict[Path, int] | None) -> Document:
    """The document; its lines go into ``lines``, or are left to be found when asked for."""
    doc = Document(None, lines, text=text if lines is None else None, text_keys=text_keys)
    loader = None
    try:
        loader = _Loader(text)
        doc.data = _Builder(loader, doc, text_keys, max(ALIAS_VALUES, len(text))).stream()
    except RecursionError:
        raise YamlSyntaxError(_line_after(loader), _TOO_DEEP) from None
    except (yaml.YAMLError, _NotComposable) as exc:
        # Let the composer describe it, exactly as it always has. It composes
        # the whole file into nodes, which only a broken file pays for.
        _raise_syntax_error(text)
        raise YamlSyntaxError(None, str(exc).splitlines()[0]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return doc


def _line_after(loader: Any) -> int | None:
    """The line of the event the loader stopped at, if it can still say."""
    try:
        return int(loader.peek_event().start_mark.line) + 1
    except Exception:  # the text is broken there too; its line is as good a guess as none
        return None


def _raise_syntax_error(text: str) -> None:
    """Raise the :class:`YamlSyntaxError` the composer finds in ``text``, if any."""
    try:
        yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise YamlSyntaxError(None, _TOO_DEEP) from None
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


class _Discard(dict[Path, int]):
    """Where the lines go while nobody asked for them: nowhere."""

    def __setitem__(self, path: Path, line: int) -> None:
        pass


def _lines_of(doc: Document) -> dict[Path, int]:
    """The table a reading fills: the document's own, or a discarding one."""
    return _Discard() if doc._lines is None else doc._lines


class _NotComposable(Exception):
    """The events break a rule of the composer (an unknown or repeated anchor, a
    second document): the composer is asked to say how."""


class _Scalar:
    """A scalar, kept only as long as needed: an anchored one, a key, a merge."""

    __slots__ = ("line", "style", "tag", "value")

    def __init__(self, tag: str, value: str, line: int, style: str | None) -> None:
        self.tag = tag
        self.value = value
        self.line = line
        self.style = style


class _Sequence:
    __slots__ = ("items", "line")

    def __init__(self, line: int) -> None:
        self.line = line
        self.items: list[_Node] = []


class _Mapping:
    __slots__ = ("line", "pairs")

    def __init__(self, line: int) -> None:
        self.line = line
        self.pairs: list[tuple[_Node, _Node]] = []


_Node = _Scalar | _Sequence | _Mapping


class _Builder:
    """Plain data straight from the parser's events, without composing nodes.

    Only what an alias or a merge key may refer to later (an anchored node, the
    value of ``<<``) and what is skipped (a repeated key's value) is kept as a
    small :data:`_Node`, so that its anchors are known; everything else becomes
    data as its events arrive. The result, lines and problems are the same as
    composing the document and walking its nodes.
    """

    def __init__(
        self, loader: Any, doc: Document, text_keys: frozenset[str], alias_values: int
    ) -> None:
        self.loader = loader
        self.get_event = loader.get_event
        self.peek_event = loader.peek_event
        self.resolve = loader.resolve
        self.doc = doc
        self.lines = _lines_of(doc)
        self.text_keys = text_keys
        self.anchors: dict[str, _Node] = {}
        self.walker = _Walker(doc, text_keys, alias_values)

    def stream(self) -> Any:
        get_event, peek_event = self.get_event, self.peek_event
        get_event()  # stream start
        data = None
        if not isinstance(peek_event(), StreamEndEvent):
            get_event()  # document start
            data = self.value((), as_text=False)
            get_event()  # document end
            if not isinstance(peek_event(), StreamEndEvent):
                raise _NotComposable("expected a single document in the stream")
        get_event()  # stream end
        return data

    def value(self, path: Path, as_text: bool) -> Any:
        """The data of the next node, its events consumed."""
        event = self.peek_event()
        cls = type(event)
        if cls is ScalarEvent and event.anchor is None:
            self.get_event()
            tag = event.tag
            if tag is None or tag == "!":
                tag = self.resolve(ScalarNode, event.value, event.implicit)
            if tag == _STR:
                return event.value
            node = _Scalar(tag, event.value, event.start_mark.line + 1, event.style)
            return self.walker.scalar(node, path, as_text)
        if cls is SequenceStartEvent and event.anchor is None:
            self.get_event()
            return self.sequence(path, as_text)
        if cls is MappingStartEvent and event.anchor is None:
            self.get_event()
            return self.mapping(path)
        return self.walker.node(self.node(), path, as_text)  # an alias or an anchored node

    def sequence(self, path: Path, as_text: bool) -> list[Any]:
        items: list[Any] = []
        lines = self.lines
        peek_event = self.peek_event
        index = 0
        while True:
            event = peek_event()
            if type(event) is SequenceEndEvent:
                self.get_event()
                return items
            item_path = (*path, index)
            if type(event) is AliasEvent:
                node = self.alias()
                lines[item_path] = node.line
                items.append(self.walker.node(node, item_path, as_text))
            else:
                lines[item_path] = event.start_mark.line + 1
                items.append(self.value(item_path, as_text))
            index += 1

    def mapping(self, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merges: list[_Node] = []
        lines = self.lines
        text_keys = self.text_keys
        get_event, peek_event, resolve = self.get_event, self.peek_event, self.resolve
        while True:
            event = peek_event()
            cls = type(event)
            if cls is MappingEndEvent:
                get_event()
                break
            if cls is ScalarEvent and event.anchor is None:
                get_event()
                key = event.value
                line = event.start_mark.line + 1
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolve(ScalarNode, key, event.implicit)
            else:
                key_node = self.node()
                line = key_node.line
                if not isinstance(key_node, _Scalar):
                    self.walker.problem(line, path, "a key must be a name, not a list or a mapping")
                    self.node()  # its value, for the anchors in it
                    continue
                key, tag = key_node.value, key_node.tag
            if tag == _MERGE:
                merges.append(self.node())
                continue
            if key in first_line:
                message = f"duplicate key (first on line {first_line[key]})"
                self.walker.problem(line, (*path, key), message)
                self.node()
                continue
            first_line[key] = line
            key_path = (*path, key)
            lines[key_path] = line
            out[key] = self.value(key_path, key in text_keys)
        for merge in merges:
            self.walker.merge(merge, path, out)
        return out

    def node(self) -> _Node:
        """The next node as a :data:`_Node`, its anchor (and those in it) remembered."""
        event = self.get_event()
        cls = type(event)
        if cls is AliasEvent:
            return self.aliased(event)
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            raise _NotComposable(f"found duplicate anchor {anchor!r}")
        line = event.start_mark.line + 1
        tag = event.tag
        node: _Node
        if cls is ScalarEvent:
            if tag is None or tag == "!":
                tag = self.resolve(ScalarNode, event.value, event.implicit)
            node = _Scalar(tag, event.value, line, event.style)
            if anchor is not None:
                self.anchors[anchor] = node
            return node
        if cls is SequenceStartEvent:
            node = _Sequence(line)
            if anchor is not None:
                self.anchors[anchor] = node
            items = node.items
            while type(self.peek_event()) is not SequenceEndEvent:
                items.append(self.node())
        else:
            node = _Mapping(line)
            if anchor is not None:
                self.anchors[anchor] = node
            pairs = node.pairs
            while type(self.peek_event()) is not MappingEndEvent:
                key = self.node()
                pairs.append((key, self.node()))
        self.get_event()  # the end of the collection
        return node

    def alias(self) -> _Node:
        return self.aliased(self.get_event())

    def aliased(self, event: AliasEvent) -> _Node:
        node = self.anchors.get(event.anchor) if event.anchor is not None else None
        if node is None:
            raise _NotComposable(f"found undefined alias {event.anchor!r}")
        return node


class _Walker:
    """The data of a :data:`_Node` (an alias's target or a merged mapping)."""

    def __init__(self, doc: Document, text_keys: frozenset[str], alias_values: int) -> None:
        self.doc = doc
        self.lines = _lines_of(doc)
        self.text_keys = text_keys
        self.constructor = SafeConstructor()
        self.active: set[int] = set()
        self.left = alias_values
        self.outermost = 1

    def spend(self, node: _Node) -> None:
        """Count one more value made from a node; too many stop the reading."""
        if not self.active:
            self.outermost = node.line
        self.left -= 1
        if self.left < 0:
            raise YamlSyntaxError(
                self.outermost,
                f"the aliases expand to more than {ALIAS_VALUES:,} values "
                "(an alias of an alias of ...); write the values out or use fewer levels",
            )

    def problem(self, line: int, path: Path, message: str) -> None:
        self.doc.problems.append(YamlProblem(line, path, message))

    def node(self, node: _Node, path: Path, as_text: bool) -> Any:
        self.spend(node)
        if isinstance(node, _Scalar):
            return self.scalar(node, path, as_text)
        if id(node) in self.active:
            self.problem(node.line, path, _RECURSIVE)
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, _Sequence):
                items = []
                lines = self.lines
                for index, item in enumerate(node.items):
                    item_path = (*path, index)
                    lines[item_path] = item.line
                    items.append(self.node(item, item_path, as_text))
                return items
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: _Scalar, path: Path, as_text: bool) -> Any:
        tag = node.tag
        if tag == _STR:
            return node.value
        if tag == _NULL:
            return None
        if as_text and tag in _NUMBERISH:
            return node.value
        # The constructor's own checks and messages, on a node made for it alone.
        yaml_node = ScalarNode(tag, node.value, None, None, style=node.style)
        try:
            if tag == _INT:
                return self.constructor.construct_yaml_int(yaml_node)
            if tag == _BOOL:
                return self.constructor.construct_yaml_bool(yaml_node)
            if tag == _FLOAT:
                return self.constructor.construct_yaml_float(yaml_node)
            return self.constructor.construct_object(yaml_node, deep=True)
        except ConstructorError as exc:
            self.problem(node.line, path, exc.problem or "cannot read this value")
        except (ValueError, LookupError, AttributeError, TypeError):  # !!int x, !!bool maybe
            self.problem(node.line, path, f"not a valid {tag.rpartition(':')[2]}")
        return None

    def mapping(self, node: _Mapping, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merges: list[_Node] = []
        lines = self.lines
        text_keys = self.text_keys
        for key_node, value_node in node.pairs:
            if isinstance(key_node, _Scalar) and key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, _Scalar):
                self.problem(key_node.line, path, "a key must be a name, not a list or a mapping")
                continue
            key = key_node.value
            line = key_node.line
            if key in first_line:
                message = f"duplicate key (first on line {first_line[key]})"
                self.problem(line, (*path, key), message)
                continue
            first_line[key] = line
            key_path = (*path, key)
            lines[key_path] = line
            out[key] = self.node(value_node, key_path, key in text_keys)
        for merge in merges:
            self.merge(merge, path, out)
        return out

    def merge(self, node: _Node, path: Path, out: dict[str, Any]) -> None:
        """Add the keys of a merged mapping (or list of them) that ``out`` lacks."""
        sources = node.items if isinstance(node, _Sequence) else [node]
        for source in sources:
            if not isinstance(source, _Mapping):
                self.problem(node.line, path, "'<<' merges a mapping or a list of mappings")
                continue
            if id(source) in self.active:
                self.problem(source.line, path, _RECURSIVE)
                continue
            saved = self.lines
            self.lines = {}
            self.active.add(id(source))
            try:
                merged = self.mapping(source, path)
            finally:
                merged_lines, self.lines = self.lines, saved
                self.active.discard(id(source))
            depth = len(path)
            for merged_path, line in merged_lines.items():
                if merged_path[depth] not in out:
                    saved[merged_path] = line
            for key, value in merged.items():
                out.setdefault(key, value)
