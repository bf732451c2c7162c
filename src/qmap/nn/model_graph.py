"""``ModelGraph``: a model's forward traced once with torch.fx, normalised (:mod:`qmap.nn.ops`) and checked, and
the questions every later stage asks of it.

- ``layers``             Conv2d/Linear module names in **execution** order (``first``, ``last``);
- ``logits``, ``head``   the node of the logits, and the trailing softmax / log-softmax on them (or None);
                         ``logits_module()`` the forward without that head;
- ``bn_pairs()``         (layer, BatchNorm) pairs to fuse: a BN whose only input is a layer used by it alone;
- ``chains()``           producer → per-channel ops → consumer: layer l's output reaches layer l+1 only through
                         one-input, one-user, channel-wise ops (activations, pooling, flatten), so channel c of
                         l feeds only channel c of l+1 (OMR, OCS, α re-parameterisation, equalisation);
- ``units()``            the forward cut at every point where a single tensor is live: a list of GraphModules
                         whose composition is the forward up to the logits. A residual block, squeeze-excite
                         gate or concat is never cut (two values are live inside it), so it is one unit; a plain
                         chain is cut after every op (a ``custom`` op such as OMR's shift stays with the op before
                         it);
                         reconstruction blocks are built from these (:mod:`qmap.methods.recon_blocks`);
- ``shapes``             per node the output shape, and per layer its input/output shape, from ``example``.

The graph shares the model's modules (nothing is copied): a weight changed in the model is seen by the graph's
units. A method that *replaces* modules (BN fusion, quantization, OMR) builds a new graph afterwards.
Unsupported operations raise one :class:`~qmap.errors.ConfigError` naming the node and listing what is
supported, before any work is done.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ConfigError
from .ops import ACTIVATIONS, HEADS, LAYERS, POOLS, SUPPORTED, as_module, channel_padding, describe, node_kind, trace

PER_CHANNEL = (*ACTIVATIONS, *POOLS, "flatten", "bn", "affine", "custom")


@dataclass
class Chain:
    """Producer layer → ``kinds`` (per-channel ops, in order) → consumer layer. ``between`` names the module-form
    ops among them that are called only here (a module reused elsewhere in the forward counts as a function),
    ``between_at`` their positions in ``kinds``; ``via_flatten`` when a flatten turns channel c into consecutive
    features of a Linear."""

    producer: str
    consumer: str
    between: list[str] = field(default_factory=list)
    kinds: tuple[str, ...] = ()
    between_at: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.producer}->{self.consumer}"

    @property
    def via_flatten(self) -> bool:
        return "flatten" in self.kinds

    def channel_site(self) -> tuple[str | None, tuple[str, ...]]:
        """The last module in between whose output still has channels (no flatten at or before it), and the kinds
        of the ops after it: where a module that works on channels (OMR's shift) can be attached, and what its
        output still passes through. ``(None, kinds)`` when no such module exists."""
        site, after = None, self.kinds
        for name, i in zip(self.between, self.between_at):
            if "flatten" in self.kinds[:i + 1]:
                break
            site, after = name, self.kinds[i + 1:]
        return site, after


def require_module(model, what: str = "model") -> nn.Module:
    """``model`` itself when it is an ``nn.Module``; else one ConfigError (an API function's first check)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} must be a torch nn.Module, not {type(model).__name__}")
    return model


class ModelGraph:
    """See the module docstring. ``example``: one input batch (e.g. ``torch.zeros(1, 3, 32, 32)``) to record
    shapes; without it, ``shapes``/``layer_shapes`` are unavailable."""

    def __init__(self, model: nn.Module, example: torch.Tensor | None = None):
        self.model = model
        self.gm = trace(model, None if example is None else tuple(example.shape))
        self.modules = dict(self.gm.named_modules())
        nodes = list(self.gm.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise ConfigError(f"{type(model).__name__}.forward takes {len(inputs)} inputs; qmap needs exactly one "
                              "image tensor")
        self.input = inputs[0]
        self.output = next(n for n in nodes if n.op == "output")
        if not isinstance(self.output.args[0], fx.Node):
            raise ConfigError(f"{type(model).__name__}.forward must return one tensor (the logits)")
        self.nodes = [n for n in nodes if n.op not in ("placeholder", "output")]
        self.kind = {n: node_kind(n, self.modules) for n in self.nodes}
        self._check()
        tail = self.output.args[0]
        self.head = tail if self.kind.get(tail) in HEADS else None  # a trailing softmax / log-softmax
        self.logits = tail if self.head is None else self.head.all_input_nodes[0]
        self.layers = self._layers()
        if example is not None:
            with torch.no_grad():
                try:  # a plain forward first: ShapeProp prints a traceback for a failing node
                    self.gm(example)
                except Exception as e:  # torch raises RuntimeError, ValueError, IndexError ... for a bad shape
                    why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    try:
                        model(example)
                    except Exception:
                        raise ConfigError(f"{type(model).__name__} cannot run on an input of shape "
                                          f"{tuple(example.shape)}: {why}") from None
                    raise ConfigError(f"{type(model).__name__}: qmap's reading of the forward fails on an input of "
                                      f"shape {tuple(example.shape)} where the model runs ({why}); a view / reshape "
                                      f"read as a per-sample flatten may not be one") from None
                ShapeProp(self.gm).propagate(example)
            for n in self.nodes:
                if "flat_size" in n.meta and self.shape(n)[1] != n.meta["flat_size"]:
                    raise ConfigError(f"{describe(n, self.modules)}: a view to (-1, {n.meta['flat_size']}) of a "
                                      f"{tuple(self.shape(n.args[0]))} map is not a flatten per sample")
                if self.kind[n] in HEADS and len(self.shape(n)) != 2:
                    raise ConfigError(f"{describe(n, self.modules)}: a softmax is supported on [N, classes] logits, "
                                      f"got {tuple(self.shape(n))}")
                if n.meta.get("from_features") and len(self.shape(n.args[0])) != 2:
                    raise ConfigError(f"{describe(n, self.modules)}: unsqueezing a {tuple(self.shape(n.args[0]))} "
                                      "tensor is read as features to a 1x1 map only from [N, C]")
                if n.meta.get("squeeze") and any(d != 1 for d in self.shape(n.args[0])[2:]):
                    raise ConfigError(f"{describe(n, self.modules)}: squeeze of a {tuple(self.shape(n.args[0]))} "
                                      "map is read as a flatten only when every dim after the channels is 1")
                if n.meta.get("square_map") and len(set(self.shape(n.args[0])[2:])) != 1:
                    raise ConfigError(f"{describe(n, self.modules)}: avg_pool2d with the map's width as its window "
                                      f"is a global pool only on square maps, got {tuple(self.shape(n.args[0]))}")

    # ------------------------------------------------------------------------------------------ checks
    def _check(self) -> None:
        for n in self.nodes:
            kind = self.kind[n]
            tensors = [a for a in n.all_input_nodes]
            bad = None
            if kind is None:
                bad = "unsupported operation"
            elif kind in ("add", "mul") and (len(tensors) != 2 or len(n.args) != 2 or n.kwargs):
                bad = "only tensor ⊕ tensor is supported for"
            elif kind == "cat" and (n.args[1:] or n.kwargs.get("dim", 0)) not in ((1,), 1):
                bad = "only channel (dim=1) concatenation is supported for"
            elif kind == "channel_pad" and (channel_padding(n) is None or len(tensors) != 1):
                bad = "only zero padding of channels, F.pad(x, (0, 0, 0, 0, a, b)), is supported for"
            elif kind in HEADS and (n is not self.output.args[0] or len(tensors) != 1 or (
                    n.op == "call_function" and (set(n.kwargs) - {"dim"} or len(n.args) > 2))
                    or getattr(as_module(n, self.modules), "dim", None) not in (1, -1, None)):
                bad = "only a softmax / log-softmax over the classes (dim 1) as the forward's last op is supported for"
            if bad:
                raise ConfigError(f"{bad} {describe(n, self.modules)} in {type(self.model).__name__}; "
                                  f"supported: {SUPPORTED}")

    def _layers(self) -> list[str]:
        names = [n.target for n in self.nodes if self.kind[n] in LAYERS]
        twice = sorted({t for t in names if names.count(t) > 1})
        if twice:
            raise ConfigError(f"layer(s) {', '.join(twice)} are called more than once; a quantized layer needs "
                              "its own module per use")
        return names

    # ------------------------------------------------------------------------------------------ queries
    @property
    def first(self) -> str:
        if not self.layers:
            raise ConfigError(f"{type(self.model).__name__} has no Conv2d/Linear layer to quantize")
        return self.layers[0]

    @property
    def last(self) -> str:
        self.first  # noqa: B018 - raises for a model without layers
        return self.layers[-1]

    def node_of(self, layer: str) -> fx.Node:
        for n in self.nodes:
            if n.op == "call_module" and n.target == layer:
                return n
        raise ConfigError(f"model has no layer {layer!r}; layers: {', '.join(self.layers)}")

    def feeds(self, layer: str) -> str | None:
        """The kind of the node that alone consumes ``layer``'s output (None: several users or the output)."""
        users = list(self.node_of(layer).users)
        return self.kind.get(users[0]) if len(users) == 1 else None

    def bn_pairs(self) -> list[tuple[str, str]]:
        """(layer, BatchNorm) module names to fuse: a BN whose only input is a layer whose output only it uses.
        Any other BN stays a standalone per-channel affine (see :mod:`qmap.nn.fuse`)."""
        return [(n.all_input_nodes[0].target, n.target) for n in self.nodes
                if self.kind[n] == "bn" and self.kind.get(n.all_input_nodes[0]) in LAYERS
                and len(n.all_input_nodes[0].users) == 1]

    def chains(self) -> tuple[list[Chain], list[str]]:
        """Every producer → consumer chain, and a note for each layer whose output reaches the next layer in
        another way (a branch, a merge) — what channel surgery cannot cross."""
        chains, notes, calls = [], [], self.module_calls
        for start in self.nodes:
            if self.kind[start] not in LAYERS:
                continue
            cur, between, kinds, at = start, [], [], []
            while True:
                users = list(cur.users)
                if len(users) != 1:
                    if users:
                        notes.append(f"{start.target}: output branches to {len(users)} nodes")
                    break
                nxt = users[0]
                kind = self.kind.get(nxt)
                if kind in LAYERS:
                    chains.append(Chain(start.target, nxt.target, between, tuple(kinds), tuple(at)))
                    break
                if kind not in PER_CHANNEL:
                    if nxt.op != "output":
                        notes.append(f"{start.target}: reaches {kind} ({nxt.name}) before the next layer")
                    break
                if nxt.op == "call_module" and calls[nxt.target] == 1:  # a reused module counts as a function
                    between.append(nxt.target)
                    at.append(len(kinds))
                kinds.append(kind)
                cur = nxt
        return chains, notes

    @property
    def module_calls(self) -> Counter:
        """How many nodes call each module (a forward may reuse one ``nn.ReLU`` instance at several places)."""
        return Counter(n.target for n in self.nodes if n.op == "call_module")

    def next_layer(self, layer: str) -> Chain:
        """The chain starting at ``layer`` (ConfigError naming why there is none)."""
        chains, notes = self.chains()
        for c in chains:
            if c.producer == layer:
                return c
        self.node_of(layer)
        why = [n for n in notes if n.startswith(f"{layer}:")]
        raise ConfigError(f"{layer} has no single next layer: "
                          f"{why[0].split(': ', 1)[1] if why else 'it is the last layer'}")

    def logits_module(self) -> nn.Module:
        """The forward up to the logits: the model itself, or (when it ends in a softmax / log-softmax) a
        GraphModule sharing its modules that returns the head's input — what qmap quantizes, lowers and compares."""
        if self.head is None:
            return self.model
        g, env = fx.Graph(), {}
        g.graph_copy(self.gm.graph, env)
        g.output(env[self.logits])
        gm = fx.GraphModule(self.gm, g, class_name="Logits")
        gm.graph.eliminate_dead_code()
        gm.recompile()
        return gm

    # ------------------------------------------------------------------------------------------ units
    def _cuts(self) -> list[int]:
        """Indices i (into ``nodes``) after which node i is the only live value."""
        order = {n: i for i, n in enumerate(self.nodes)}
        order[self.input] = -1
        last_use = {n: max((order.get(u, len(self.nodes)) for u in n.users), default=-1)
                    for n in [self.input, *self.nodes]}
        cuts, live = [], {self.input}
        for i, n in enumerate(self.nodes):
            live.add(n)
            live = {v for v in live if last_use[v] > i}
            glued = i + 1 < len(self.nodes) and self.kind[self.nodes[i + 1]] == "custom"  # OMR's shift stays
            if live == {n} and not glued:                                               # with its producer
                cuts.append(i)
        return cuts

    def units(self) -> list[fx.GraphModule]:
        """GraphModules whose composition is the forward up to the logits (a trailing softmax head is left out:
        reconstruction matches logits), cut wherever a single tensor is live."""
        units, start, inp = [], 0, self.input
        for end in self._cuts():
            if self.nodes[end] is self.head:
                break
            g = fx.Graph()
            env = {inp: g.placeholder("x")}
            for n in self.nodes[start:end + 1]:
                env[n] = g.node_copy(n, env.__getitem__)
            g.output(env[self.nodes[end]])
            units.append(fx.GraphModule(self.gm, g, class_name="Unit"))
            start, inp = end + 1, self.nodes[end]
        return units

    # ------------------------------------------------------------------------------------------ shapes
    def shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise ConfigError("graph shapes need an example input: ModelGraph(model, example)")
        return tuple(meta.shape)

    def layer_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``{layer: (input shape, output shape)}`` in execution order."""
        out = {}
        for n in self.nodes:
            if self.kind[n] in LAYERS:
                out[n.target] = (self.shape(n.all_input_nodes[0]), self.shape(n))
        return out



def downsamples(unit: fx.GraphModule) -> bool:
    """Whether ``unit`` (one of :meth:`ModelGraph.units`) reduces the spatial size — a pooling op or a strided
    conv: a stage ends there."""
    modules = dict(unit.named_modules())
    for n in unit.graph.nodes:
        kind = node_kind(n, modules)
        if kind in POOLS or (kind == "conv" and max(modules[n.target].stride) > 1):
            return True
    return False
