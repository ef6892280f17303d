"""THREAD (RFC 5256 §3): the ORDEREDSUBJECT and REFERENCES algorithms, and the thread-list answer.

Both work on the messages' summaries (ordering.Summary) by position; a message's date is its
sent date, or its internal date when it has no usable Date field (RFC 5256 §3), and ties go by
position (the sequence order). Trees are walked with explicit stacks, never recursion: a chain
of replies may be as long as the folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from appliance.imap.ordering import Summary

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class _Node:
    """A container (RFC 5256 §3 REFERENCES): a message (position) or a dummy (-1)."""

    __slots__ = ("children", "key", "parent", "position")

    def __init__(self, position: int = -1) -> None:
        self.position = position
        self.parent: _Node | None = None
        self.children: list[_Node] = []
        self.key: tuple[float, int] = (0.0, 0)  # (date, position) it sorts by among its siblings

    def adopt(self, child: _Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def is_ancestor_of(self, other: _Node) -> bool:
        node: _Node | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False


def _dates(summaries: Sequence[Summary], internaldates: Sequence[float]) -> list[float]:
    return [
        internal if s.date is None else s.date for s, internal in zip(summaries, internaldates, strict=True)
    ]


def ordered_subject(summaries: Sequence[Summary], internaldates: Sequence[float]) -> list[_Node]:
    """RFC 5256 §3 ORDEREDSUBJECT: messages sorted by base subject, then date; each run of one
    subject is a thread whose first message is the parent of the others; threads by the date of
    their first message."""
    dates = _dates(summaries, internaldates)
    order = sorted(range(len(summaries)), key=lambda i: (summaries[i].subject, dates[i], i))
    roots: list[_Node] = []
    for i in order:
        if roots and summaries[roots[-1].position].subject == summaries[i].subject:
            roots[-1].adopt(_Node(i))
        else:
            root = _Node(i)
            root.key = (dates[i], i)
            roots.append(root)
    roots.sort(key=lambda node: node.key)
    return roots


def references(summaries: Sequence[Summary], internaldates: Sequence[float]) -> list[_Node]:
    """RFC 5256 §3 REFERENCES, steps (1) to (6)."""
    dates = _dates(summaries, internaldates)
    by_id: dict[str, _Node] = {}
    messages: list[_Node] = []
    for i, summary in enumerate(summaries):
        # (1)(A) the message's own container: a duplicate or missing Message-ID gets a fresh one
        node = by_id.get(summary.message_id) if summary.message_id is not None else None
        if node is None or node.position >= 0:
            node = _Node(i)
            if summary.message_id is not None and summary.message_id not in by_id:
                by_id[summary.message_id] = node
        else:
            node.position = i
        messages.append(node)
        refs = list(summary.references)
        if not refs and summary.in_reply_to is not None:
            refs = [summary.in_reply_to]
        parent: _Node | None = None
        for ref in refs:  # link the references in order; existing links and loops left alone
            container = by_id.get(ref)
            if container is None:
                container = by_id[ref] = _Node()
            if parent is not None and container.parent is None and not container.is_ancestor_of(parent):
                parent.adopt(container)
            parent = container
        # (1)(B) the message is a child of its last reference (a parent found before is dropped)
        if parent is not None and not node.is_ancestor_of(parent):
            parent.adopt(node)
        elif parent is None and node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    # (2) the root set; (3) the table is no longer needed
    roots = [node for node in messages if node.parent is None]
    seen = {id(node) for node in roots}
    for container in by_id.values():
        if container.parent is None and id(container) not in seen:
            roots.append(container)
            seen.add(id(container))
    by_id.clear()
    roots = _prune(roots)
    _sort(roots, dates)
    roots = _merge_subjects(roots, summaries)
    _sort(roots, dates)
    return roots


def _walk(roots: list[_Node]) -> Iterator[_Node]:
    """Every node below `roots` (and they), parents before children."""
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _prune(roots: list[_Node]) -> list[_Node]:
    """(4) Dummies without children go; a dummy's children take its place, except at the root
    where a dummy with more than one child stays."""
    for node in reversed(list(_walk(roots))):  # children before their parents
        kept: list[_Node] = []
        for child in node.children:
            if child.position >= 0:
                kept.append(child)
                continue
            for grandchild in child.children:
                grandchild.parent = node
            kept += child.children
        node.children = kept
    out: list[_Node] = []
    for root in roots:
        if root.position < 0 and len(root.children) <= 1:
            for child in root.children:
                child.parent = None
            out += root.children
        else:
            out.append(root)
    return out


def _sort(roots: list[_Node], dates: Sequence[float]) -> None:
    """(6) Siblings by date, children sorted before their parents; a dummy sorts as its first
    child does."""
    for node in reversed(list(_walk(roots))):
        node.children.sort(key=lambda child: child.key)
        if node.position >= 0:
            node.key = (dates[node.position], node.position)
        elif node.children:
            node.key = node.children[0].key
    roots.sort(key=lambda node: node.key)


def _merge_subjects(roots: list[_Node], summaries: Sequence[Summary]) -> list[_Node]:
    """(5) Threads at the root with the same base subject gathered under one."""

    def subject_of(node: _Node) -> str:
        target = node if node.position >= 0 else node.children[0]
        return summaries[target.position].subject

    def is_reply(node: _Node) -> bool:
        return node.position >= 0 and summaries[node.position].reply

    table: dict[str, _Node] = {}
    for node in roots:  # (B)
        subject = subject_of(node)
        if not subject:
            continue
        held = table.get(subject)
        if held is None or (
            held.position >= 0 and (node.position < 0 or (is_reply(held) and not is_reply(node)))
        ):
            table[subject] = node
    out: list[_Node] = []
    for node in roots:  # (C)
        subject = subject_of(node)
        held = table.get(subject) if subject else None
        if held is None or held is node:
            out.append(node)
            continue
        if held.position < 0 and node.position < 0:
            for child in list(node.children):
                held.adopt(child)
        elif held.position < 0 or (is_reply(node) and not is_reply(held)):
            held.adopt(node)
        else:
            dummy = _Node()
            position = out.index(held) if held in out else -1
            dummy.adopt(held)
            dummy.adopt(node)
            table[subject] = dummy
            if position >= 0:
                out[position] = dummy
            else:
                roots[roots.index(held)] = dummy  # a root not reached yet: the dummy stands in
    return out


def thread_list(roots: list[_Node], numbers: Sequence[int]) -> bytes:
    """RFC 5256 §4 thread-list: "(" members ")" per thread; a chain "a b c", siblings each in
    parentheses, a dummy as an empty member. `numbers`: what each position is called."""
    out: list[bytes] = []
    # Stack items: a node to write, or bytes to write as they are.
    stack: list[_Node | bytes] = []
    for root in reversed(roots):
        stack += [b")", root, b"("]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        node: _Node | None = item
        first = True
        while node is not None:
            if node.position >= 0:
                out.append(b"%d" % numbers[node.position] if first else b" %d" % numbers[node.position])
                first = False
            if len(node.children) == 1:
                node = node.children[0]
                continue
            if node.children:
                if not first:
                    out.append(b" ")
                for child in reversed(node.children):
                    stack += [b")", child, b"("]
            node = None
    return b"".join(out)
