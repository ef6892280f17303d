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


class Container:
    """A container (RFC 5256 §3 REFERENCES): a message (position) or a dummy (-1)."""

    __slots__ = ("children", "key", "parent", "position")

    def __init__(self, position: int = -1) -> None:
        self.position = position
        self.parent: Container | None = None
        self.children: list[Container] = []
        self.key: tuple[float, int] = (0.0, 0)  # (date, position) it sorts by among its siblings

    def adopt(self, child: Container) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def is_ancestor_of(self, other: Container) -> bool:
        node: Container | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False


def _dates(summaries: Sequence[Summary], internaldates: Sequence[float]) -> list[float]:
    return [
        internal if s.date is None else s.date for s, internal in zip(summaries, internaldates, strict=True)
    ]


def ordered_subject(summaries: Sequence[Summary], internaldates: Sequence[float]) -> list[Container]:
    """RFC 5256 §3 ORDEREDSUBJECT: messages sorted by base subject, then date; each run of one
    subject is a thread whose first message is the parent of the others; threads by the date of
    their first message."""
    dates = _dates(summaries, internaldates)
    order = sorted(range(len(summaries)), key=lambda i: (summaries[i].subject, dates[i], i))
    roots: list[Container] = []
    for i in order:
        if roots and summaries[roots[-1].position].subject == summaries[i].subject:
            roots[-1].adopt(Container(i))
        else:
            root = Container(i)
            root.key = (dates[i], i)
            roots.append(root)
    roots.sort(key=lambda node: node.key)
    return roots


def references(summaries: Sequence[Summary], internaldates: Sequence[float]) -> list[Container]:
    """RFC 5256 §3 REFERENCES, steps (1) to (6)."""
    dates = _dates(summaries, internaldates)
    by_id: dict[str, Container] = {}
    messages: list[Container] = []
    for i, summary in enumerate(summaries):
        # (1)(A) the message's own container: a duplicate or missing Message-ID gets a fresh one
        node = by_id.get(summary.message_id) if summary.message_id is not None else None
        if node is None or node.position >= 0:
            node = Container(i)
            if summary.message_id is not None and summary.message_id not in by_id:
                by_id[summary.message_id] = node
        else:
            node.position = i
        messages.append(node)
        refs = list(summary.references)
        if not refs and summary.in_reply_to is not None:
            refs = [summary.in_reply_to]
        parent: Container | None = None
        for ref in refs:  # link the references in order; existing links and loops left alone
            container = by_id.get(ref)
            if container is None:
                container = by_id[ref] = Container()
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


def _walk(roots: list[Container]) -> Iterator[Container]:
    """Every node below `roots` (and they), parents before children."""
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _prune(roots: list[Container]) -> list[Container]:
    """(4) Dummies without children go; a dummy's children take its place, except at the root
    where a dummy with more than one child stays."""
    for node in reversed(list(_walk(roots))):  # children before their parents
        kept: list[Container] = []
        for child in node.children:
            if child.position >= 0:
                kept.append(child)
                continue
            for grandchild in child.children:
                grandchild.parent = node
            kept += child.children
        node.children = kept
    out: list[Container] = []
    for root in roots:
        if root.position < 0 and len(root.children) <= 1:
            for child in root.children:
                child.parent = None
            out += root.children
        else:
            out.append(root)
    return out


def _sort(roots: list[Container], dates: Sequence[float]) -> None:
    """(6) Siblings by date, children sorted before their parents; a dummy sorts as its first
    child does."""
    for node in reversed(list(_walk(roots))):
        node.children.sort(key=lambda child: child.key)
        if node.position >= 0:
            node.key = (dates[node.position], node.position)
        elif node.children:
            node.key = node.children[0].key
    roots.sort(key=lambda node: node.key)


def _merge_subjects(roots: list[Container], summaries: Sequence[Summary]) -> list[Container]:
    """(5) Threads at the root with the same base subject gathered under one."""

    def subject_of(node: Container) -> str:
        target = node if node.position >= 0 else node.children[0]
        return summaries[target.position].subject

    def is_reply(node: Container) -> bool:
        return node.position >= 0 and summaries[node.position].reply

    table: dict[str, Container] = {}
    for node in roots:  # (B)
        subject = subject_of(node)
        if not subject:
            continue
        held = table.get(subject)
        if held is None or (
            held.position >= 0 and (node.position < 0 or (is_reply(held) and not is_reply(node)))
        ):
            table[subject] = node
    out: list[Container] = []
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
            dummy = Container()
            position = out.index(held) if held in out else -1
            dummy.adopt(held)
            dummy.adopt(node)
            table[subject] = dummy
            if position >= 0:
                out[position] = dummy
            else:
                roots[roots.index(held)] = dummy  # a root not reached yet: the dummy stands in
    return out


def thread_list(roots: list[Container], numbers: Sequence[int]) -> bytes:
    """RFC 5256 §4 thread-list: "(" members ")" per thread; a chain "a b c", siblings each in
    parentheses, a dummy as an empty member. `numbers`: what each position is called."""
    out: list[str] = []
    # Stack items: a node to write, or text to write as it is.
    stack: list[Container | str] = []
    for root in reversed(roots):
        stack += [")", root, "("]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        if not item.children:  # a message without replies: most of them
            out.append(str(numbers[item.position]))
            continue
        node: Container | None = item
        first = True
        while node is not None:
            if node.position >= 0:
                out.append(str(numbers[node.position]) if first else f" {numbers[node.position]}")
                first = False
            if len(node.children) == 1:
                node = node.children[0]
                continue
            if node.children:
                if not first:
                    out.append(" ")
                for child in reversed(node.children):
                    stack += [")", child, "("]
            node = None
    return "".join(out).encode()
