"""Precision policies: which numeric precision each layer group of a subnet runs in, and their strings.

A policy is a companion to an arch string. Its groups are the stem (with the fixed first block, where the
space has one), each stage of the space in order, and the head (final expansion, feature layer,
classifier). Grammar::

    policy := "p:" STEM "," STAGE ("," STAGE)* "," HEAD        # one group per stage, stem and head around them
    STEM   := LETTER
    HEAD   := LETTER
    STAGE  := LETTER                                            # the whole stage
            | LETTER LETTER+                                    # one letter per active block, in order
    LETTER := "f"                                               # fp32
            | "i"                                               # int8 (8-bit weights per channel, 8-bit activations)

Example (``ofa_mbv3_cifar``, 5 stages): ``p:f,i,i,fi,i,i,f`` -- stem and head fp32, stages 1, 2, 4 and 5
int8, stage 3 with its first block fp32 and its second int8. The canonical form writes a stage whose blocks
all share one precision as that one letter, so a string round-trips through ``policy_from_string`` and
``policy_to_string``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._arch import Arch, ArchError
from ._space import SearchSpace

__all__ = ["PRECISIONS", "PolicyError", "PrecisionPolicy", "policy_from_string", "policy_or_none", "policy_to_string",
           "precision_groups", "precision_label", "validate_policy"]

# The precisions a policy can name, and the letter each is written as (the one place they are listed).
PRECISION_LETTERS = {"fp32": "f", "int8": "i"}
PRECISIONS = tuple(PRECISION_LETTERS)
_LETTER_PRECISIONS = {v: k for k, v in PRECISION_LETTERS.items()}
PREFIX = "p:"


class PolicyError(ArchError):
    """A precision policy that is malformed or does not fit its space or arch; the message names the group,
    the value and what is allowed."""


@dataclass(frozen=True, slots=True)
class PrecisionPolicy:
    """The precision of each layer group of a subnet.

    ``stages`` has one entry per stage of the space: a 1-tuple (the whole stage) or one precision per
    active block of the arch.
    """

    stem: str
    stages: tuple[tuple[str, ...], ...]
    head: str

    def __post_init__(self) -> None:
        for where, value in (("stem", self.stem), ("head", self.head),
                             *((f"stage{i + 1}", v) for i, s in enumerate(self.stages) for v in s)):
            if value not in PRECISIONS:
                raise PolicyError(f"precision policy {where}: {value!r} is not allowed; allowed: "
                                  f"{', '.join(PRECISIONS)}")
        if any(len(s) == 0 for s in self.stages):
            raise PolicyError("precision policy: every stage needs a precision")

    @classmethod
    def uniform(cls, space: SearchSpace, precision: str) -> PrecisionPolicy:
        """Every group of ``space`` in ``precision``."""
        return cls(precision, tuple((precision,) for _ in space.stages), precision)

    def block_precision(self, stage_index: int, block_index: int) -> str:
        """The precision of block ``block_index`` of stage ``stage_index`` (-1: the fixed first block, which
        belongs to the stem)."""
        if stage_index < 0:
            return self.stem
        stage = self.stages[stage_index]
        return stage[0] if len(stage) == 1 else stage[block_index]

    @property
    def precisions(self) -> frozenset[str]:
        """The precisions this policy uses."""
        return frozenset((self.stem, self.head, *(v for s in self.stages for v in s)))

    def is_uniform(self, precision: str) -> bool:
        return self.precisions == {precision}

    def canonical(self) -> PrecisionPolicy:
        """The same policy with each stage whose blocks share one precision written once."""
        return PrecisionPolicy(self.stem, tuple(s[:1] if len(set(s)) == 1 else s for s in self.stages), self.head)

    def __str__(self) -> str:
        return policy_to_string(self)


def precision_groups(space: SearchSpace) -> tuple[str, ...]:
    """The names of a policy's groups for ``space``: ``stem``, the stage names, ``head``."""
    return ("stem", *(spec.name for spec in space.stages), "head")


def _example(space: SearchSpace) -> str:
    return PREFIX + ",".join(["f", *("i" for _ in space.stages), "f"])


def validate_policy(space: SearchSpace, policy: PrecisionPolicy, arch: Arch | None = None) -> PrecisionPolicy:
    """Return ``policy`` if it fits ``space`` (and ``arch``: a per-block stage gives one precision per active
    block); raise ``PolicyError`` naming the first misfit."""
    if len(policy.stages) != len(space.stages):
        raise PolicyError(f"precision policy has {len(policy.stages)} stages; space {space.name!r} has "
                          f"{len(space.stages)} (groups: {', '.join(precision_groups(space))})")
    for index, (spec, stage) in enumerate(zip(space.stages, policy.stages)):
        if len(stage) == 1:
            continue
        if arch is not None and len(stage) != arch.stages[index].depth:
            raise PolicyError(f"precision policy {spec.name}: {len(stage)} per-block precisions for "
                              f"{arch.stages[index].depth} active blocks; give one letter for the whole stage "
                              f"or one per block")
        if arch is None and len(stage) not in spec.depths:
            raise PolicyError(f"precision policy {spec.name}: {len(stage)} per-block precisions; stage depths "
                              f"allowed: {', '.join(map(str, spec.depths))}")
    return policy


def policy_to_string(policy: PrecisionPolicy) -> str:
    """The canonical string of ``policy`` (``p:`` then stem, stages, head)."""
    canonical = policy.canonical()
    letters = [PRECISION_LETTERS[canonical.stem],
               *("".join(PRECISION_LETTERS[v] for v in s) for s in canonical.stages),
               PRECISION_LETTERS[canonical.head]]
    return PREFIX + ",".join(letters)


def policy_from_string(space: SearchSpace, text: str, arch: Arch | None = None) -> PrecisionPolicy:
    """Parse a policy string of ``space`` (checked against ``arch`` when given); ``PolicyError`` naming the
    bad part and what is allowed."""
    allowed = ", ".join(f"{letter} ({name})" for name, letter in PRECISION_LETTERS.items())
    stripped = text.strip()
    if not stripped.startswith(PREFIX):
        raise PolicyError(f"precision policy {text!r} must start with {PREFIX!r} (e.g. {_example(space)})")
    tokens = stripped[len(PREFIX):].split(",")
    groups = precision_groups(space)
    if len(tokens) != len(groups):
        raise PolicyError(f"precision policy {text!r} has {len(tokens)} groups; space {space.name!r} needs "
                          f"{len(groups)}: {', '.join(groups)} (e.g. {_example(space)})")
    for group, token in zip(groups, tokens):
        bad = [c for c in token if c not in _LETTER_PRECISIONS]
        if not token or bad:
            raise PolicyError(f"precision policy {group}: {token!r} is not allowed; allowed letters: {allowed}")
        if group in ("stem", "head") and len(token) != 1:
            raise PolicyError(f"precision policy {group}: {token!r} is not allowed; the {group} takes one "
                              f"letter: {allowed}")
    stem, *stages, head = ([_LETTER_PRECISIONS[c] for c in token] for token in tokens)
    policy = PrecisionPolicy(stem[0], tuple(tuple(s) for s in stages), head[0])
    return validate_policy(space, policy, arch)


def policy_or_none(policy: PrecisionPolicy | None) -> PrecisionPolicy | None:
    """``policy`` in its canonical form, or None for "fp32 throughout" (no policy and a uniform fp32 one are the
    same subnet: the one every fp32 path builds, measures and stores without a policy)."""
    if policy is None or policy.is_uniform("fp32"):
        return None
    return policy.canonical()


def precision_label(policy: PrecisionPolicy | str | None) -> str:
    """``fp32``, ``int8`` (every group int8) or ``mixed``: what a front, a plot legend or a query names a
    subnet's precision by. A string is read as a policy string (``p:...``) without a space to check it against."""
    if isinstance(policy, str):
        letters = set(policy.strip()[len(PREFIX):].replace(",", ""))
        used = {_LETTER_PRECISIONS.get(c, c) for c in letters}
        return next(iter(used)) if len(used) == 1 else "mixed"
    if policy is None:
        return "fp32"
    used = policy.precisions
    return next(iter(used)) if len(used) == 1 else "mixed"
