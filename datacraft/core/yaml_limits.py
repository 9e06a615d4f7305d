"""YAML loaded with limits checked before anything is built: an alias ("billion laughs") bomb,
a recursive alias or a nesting too deep is refused from the node graph, before expansion."""

from __future__ import annotations

from typing import Any

import yaml

MAX_NODES = 200_000  # nodes after alias expansion; a large config has a few thousand
MAX_DEPTH = 100


class YAMLLimitError(yaml.YAMLError):
    """A YAML document over the limits (`problem` says which)."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_node(root: yaml.Node, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Raise `YAMLLimitError` when `root` expands to more than `max_nodes` nodes, nests deeper than
    `max_depth` or refers to itself. Shared (aliased) nodes are counted once per use, in linear time."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in kids)
            depth[key] = 1 + max((depth[id(c)] for c in kids), default=0)
            if size[key] > max_nodes:
                raise YAMLLimitError(f"expands to more than {max_nodes:,} nodes (an alias bomb?)", node.start_mark)
            if depth[key] > max_depth:
                raise YAMLLimitError(f"nested deeper than {max_depth} levels", node.start_mark)
            continue
        if key in size:
            continue
        if key in active:
            raise YAMLLimitError("an alias refers to a node that contains it (recursive YAML)", node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def safe_load(text: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """`yaml.safe_load` with the limits of `check_node` applied to the composed node graph first."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLLimitError(f"nested deeper than {max_depth} levels") from None
        if node is None:
            return None
        check_node(node, max_nodes, max_depth)
        return loader.construct_document(node)
    finally:
        loader.dispose()
