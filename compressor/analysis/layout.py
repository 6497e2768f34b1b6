"""Channel groups and layouts: which group's channels sit where along a tensor axis.

A *group* is a set of channels that must be kept or removed together everywhere it appears.
A *layout* describes one tensor axis as a sequence of segments; segment ``(g, inner)`` holds the
channels of group ``g`` in order, each channel owning ``inner`` consecutive positions (``inner > 1``
after a Flatten: a conv channel owns H*W features; or for attention heads: a head owns its head_dim).

Groups live in a union-find. Two operations refine them lazily:
- split: group g becomes two groups (first k channels, the rest), e.g. when a Split or Slice cuts
  through it;
- coarsen: group g becomes a group of blocks of f channels, e.g. when a Reshape turns 768 features
  into 12 heads of 64.
Layouts store group ids and are normalised on read, so earlier layouts follow later refinements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Segment = tuple[int, int]  # (group id, inner)
Layout = tuple[Segment, ...]


@dataclass
class GroupInfo:
    size: int
    frozen: list[str] = field(default_factory=list)
    origin: str = ""


class GroupTable:
    """Union-find over channel groups with split and coarsen refinements."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.info: list[GroupInfo] = []
        self.replaced: dict[int, tuple] = {}

    # ---- basic union-find -------------------------------------------------
    def new(self, size: int, origin: str = "", frozen: str | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.info.append(GroupInfo(size=size, origin=origin, frozen=[frozen] if frozen else []))
        return gid

    def find(self, g: int) -> int:
        root = g
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[g] != root:
            self.parent[g], g = root, self.parent[g]
        return root

    def size(self, g: int) -> int:
        return self.info[self.find(g)].size

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        assert ra not in self.replaced and rb not in self.replaced, "union of refined groups"
        if self.info[ra].size != self.info[rb].size:
            raise ValueError(f"cannot unite groups of sizes {self.info[ra].size} and {self.info[rb].size}")
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        for reason in self.info[rb].frozen:
            if reason not in self.info[ra].frozen:
                self.info[ra].frozen.append(reason)
        return ra

    def freeze(self, g: int, reason: str) -> None:
        for leaf in self.leaves(g):
            fr = self.info[leaf].frozen
            if reason not in fr:
                fr.append(reason)

    def is_frozen(self, g: int) -> bool:
        return bool(self.info[self.find(g)].frozen)

    # ---- refinements -------------------------------------------------------
    def split(self, g: int, k: int) -> tuple[int, int]:
        """Split group g after its first k channels; returns the two new group ids."""
        r = self.find(g)
        assert r not in self.replaced
        size = self.info[r].size
        assert 0 < k < size, (k, size)
        a = self.new(k, origin=self.info[r].origin)
        b = self.new(size - k, origin=self.info[r].origin)
        self.info[a].frozen = list(self.info[r].frozen)
        self.info[b].frozen = list(self.info[r].frozen)
        self.replaced[r] = ("split", a, b)
        return a, b

    def coarsen(self, g: int, f: int) -> int:
        """Regroup g's channels into blocks of f (block = new channel); returns the new group."""
        r = self.find(g)
        assert r not in self.replaced
        size = self.info[r].size
        assert size % f == 0
        c = self.new(size // f, origin=self.info[r].origin)
        self.info[c].frozen = list(self.info[r].frozen)
        self.replaced[r] = ("coarsen", c, f)
        return c

    def leaves(self, g: int) -> list[int]:
        """The current (unrefined) groups that group g has become."""
        return [s[0] for s in self.normalize(((g, 1),))]

    def normalize(self, layout: Layout) -> Layout:
        out: list[Segment] = []
        stack = list(reversed(layout))
        while stack:
            g, inner = stack.pop()
            r = self.find(g)
            rep = self.replaced.get(r)
            if rep is None:
                out.append((r, inner))
            elif rep[0] == "split":
                stack.append((rep[2], inner))
                stack.append((rep[1], inner))
            else:
                stack.append((rep[1], inner * rep[2]))
        # merge nothing: adjacent segments of one group stay separate (a repeated group is meaningful)
        return tuple(out)

    def length(self, layout: Layout) -> int:
        return sum(self.size(g) * inner for g, inner in layout)

    # ---- layout algebra ----------------------------------------------------
    def cut(self, layout: Layout, pos: int) -> Layout:
        """Refine so that a segment boundary falls at position ``pos`` (if representable)."""
        layout = self.normalize(layout)
        start = 0
        for g, inner in layout:
            n = self.size(g) * inner
            if start < pos < start + n:
                rel = pos - start
                if rel % inner:
                    raise LayoutError(f"position {pos} cuts through a block of {inner}")
                self.split(g, rel // inner)
                return self.normalize(layout)
            start += n
        return layout

    def sub(self, layout: Layout, start: int, stop: int) -> Layout:
        """The segments covering positions [start, stop), refining groups at both ends."""
        layout = self.cut(layout, start)
        layout = self.cut(layout, stop)
        out = []
        pos = 0
        for g, inner in layout:
            n = self.size(g) * inner
            if pos >= start and pos + n <= stop:
                out.append((g, inner))
            pos += n
        return tuple(out)

    def unify(self, a: Layout, b: Layout) -> Layout:
        """Make two layouts of one axis identical (union groups, refining as needed)."""
        a, b = self.normalize(a), self.normalize(b)
        if self.length(a) != self.length(b):
            raise LayoutError(f"layouts of lengths {self.length(a)} and {self.length(b)} cannot be unified")
        for _ in range(10_000):
            a, b = self.normalize(a), self.normalize(b)
            pos = 0
            changed = False
            for (ga, ia), (gb, ib) in zip(a, b):
                na, nb = self.size(ga) * ia, self.size(gb) * ib
                if ia != ib:
                    if ia < ib and ib % ia == 0 and self.size(ga) % (ib // ia) == 0:
                        self.coarsen(ga, ib // ia)
                    elif ib < ia and ia % ib == 0 and self.size(gb) % (ia // ib) == 0:
                        self.coarsen(gb, ia // ib)
                    elif self.size(ga) % (math.lcm(ia, ib) // ia) == 0 and self.size(gb) % (math.lcm(ia, ib) // ib) == 0:
                        self.coarsen(ga, math.lcm(ia, ib) // ia)  # blocks both sides hold whole (GroupNorms of
                        # 4 and 6 channels on one residual sum: 12); the next pass coarsens gb to them
                    else:
                        raise LayoutError("channel blocks of different sizes cannot be unified")
                    changed = True
                    break
                if na < nb:
                    self.split(gb, self.size(ga))
                    changed = True
                    break
                if nb < na:
                    self.split(ga, self.size(gb))
                    changed = True
                    break
                if self.find(ga) != self.find(gb):
                    self.union(ga, gb)
                pos += na
            if not changed and len(a) == len(b):
                return self.normalize(a)
        raise LayoutError("layout unification did not converge")


class LayoutError(Exception):
    """Two layouts cannot be made consistent; the rule freezes the groups involved."""


def positions(table: GroupTable, layout: Layout, keep: dict[int, "list[int]"]) -> list[int] | None:
    """Kept positions along an axis with this layout, or None when nothing is removed."""
    layout = table.normalize(layout)
    out: list[int] = []
    pos = 0
    changed = False
    for g, inner in layout:
        size = table.size(g)
        kept = keep.get(table.find(g))
        if kept is None:
            kept = range(size)
        elif len(kept) != size:
            changed = True
        for c in kept:
            base = pos + c * inner
            out.extend(range(base, base + inner))
        pos += size * inner
    return out if changed else None


def kept_count(table: GroupTable, layout: Layout, keep: dict[int, "list[int]"]) -> int | None:
    """``len(positions(...))`` without listing the positions: how many positions along an axis with
    this layout survive ``keep``, or None when nothing is removed."""
    total = 0
    changed = False
    for g, inner in table.normalize(layout):
        size = table.size(g)
        kept = keep.get(table.find(g))
        if kept is not None and len(kept) != size:
            changed = True
        total += (size if kept is None else len(kept)) * inner
    return total if changed else None
