"""The operator vocabulary of a :class:`~qmap.nn.ModelGraph`, and the normalisation that maps a traced forward
onto it.

Every node of a normalised graph has one *kind*:

    layers        conv (Conv2d, any groups), linear
    fused         bn (BatchNorm1d/2d: folded into the layer before it, else a standalone per-channel affine)
    affine        scalar arithmetic on a tensor: ``x * c``, ``c * x``, ``x / c``, ``x + c``, ``x − c``, ``c − x``,
                  ``−x`` for a number c (:func:`scalar_op`: a·x + b with scalars a, b)
    activations   relu, relu6, hardswish, hardsigmoid, gelu, silu, sigmoid, leaky_relu, elu, tanh, softplus,
                  mish, hardtanh (also ``x.clamp(a, b)``: relu for (0, None), relu6 for (0, 6)), prelu
    pooling       maxpool, avgpool, adaptive_avgpool, adaptive_maxpool (module, functional, ``x.mean((2, 3))``,
                  ``x.amax((2, 3))``)
    shape         flatten (``nn.Flatten``, ``torch.flatten``, ``x.view(x.size(0), -1)``, ``x.reshape(n, -1)``,
                  ``x.view(b, c)`` with b the batch size, ``x.squeeze()`` of a [N, C, 1, 1] map),
                  unflatten (``y.view(b, c, 1, 1)``, ``y.unsqueeze(-1).unsqueeze(-1)``, ``y[:, :, None, None]``:
                  features back to channels of a 1×1 map, e.g. a squeeze-excite gate),
                  channel_pad (``F.pad(x, (0, 0, 0, 0, a, b))``: a and b zero channels before / after),
                  channel_gather (a static choice of channels: ``x.chunk(n, 1)[i]``, ``torch.split(x, s, 1)[i]``,
                  ``x[:, a:b]`` → :func:`channel_piece`; ShuffleNet's view / transpose / view →
                  :func:`channel_shuffle`)
    merges        add (``+``, ``torch.add``), mul (elementwise, e.g. a squeeze-excite gate), cat (channels)
    heads         softmax, log_softmax over the classes of the logits, as the forward's last op (a monotone map:
                  qmap quantizes and lowers the logits, :meth:`~qmap.nn.ModelGraph.logits_module`)
    custom        a module that states its own integer form (``integer_op``, e.g. OMR's shift)

Module and functional forms of an op get the same kind; dropout, identity, ``.contiguous()`` and the
``size``/``shape`` arithmetic of a view vanish, and so does ``g.expand_as(x)`` feeding an elementwise ``*`` / ``+``
(broadcasting does the same). More spellings are rewritten: a strided spatial slice ``x[:, :, ::s, ::s]`` is
``F.max_pool2d(x, 1, s)`` (a 1×1 window with stride s picks the same elements); ``F.avg_pool2d(x, x.size()[3])``
(kernel = the map's own width) a global average pool, which it is on a square map (checked when shapes are
recorded), as is ``F.avg_pool2d(x, x.size()[2:])`` on any map; ``x.clamp(lo, hi)`` the activation it computes;
scalar arithmetic an affine; chunk / split / channel slices and ShuffleNet's shuffle channel gathers.
Activations written out by hand become the op they compute (:func:`_fold_idioms`): ``relu6(x + 3) / 6`` →
hardsigmoid(x), ``x * relu6(x + 3) / 6`` and ``x * hardsigmoid(x)`` → hardswish(x), ``x * sigmoid(x)`` →
silu(x), ``x * tanh(softplus(x))`` → mish(x), ``hardtanh(x, 0, 6)`` → relu6(x) (``/ 6`` also as ``* (1/6)``,
``relu6`` also as ``nn.ReLU6`` or ``hardtanh(·, 0, 6)``). Anything else is unsupported.

:func:`trace` traces symbolically; a forward that computes with a size in Python (``int(x.size(1) * ratio)``)
is traced again running every op on one example (:class:`_SizedTracer`), its sizes then numbers of the graph.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ConfigError

ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid", "gelu", "silu", "sigmoid", "leaky_relu", "elu", "tanh",
               "softplus", "mish", "hardtanh", "prelu")
POOLS = ("maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool")
LAYERS = ("conv", "linear")
MERGES = ("add", "mul", "cat")
HEADS = ("softmax", "log_softmax")  # allowed only on the logits, as the forward's last op
# curved (or, for leaky_relu, not zero below 0): the integer form is a lookup table over the layer's output codes
TABLE_ACTIVATIONS = ("hardswish", "hardsigmoid", "gelu", "silu", "sigmoid", "leaky_relu", "elu", "tanh", "softplus",
                     "mish", "hardtanh", "prelu")
# φ(α·z) = α·φ(z) for α > 0
HOMOGENEOUS = ("relu", "maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool", "flatten")

_MODULE_KINDS: tuple[tuple[type, str], ...] = (
    (nn.Conv2d, "conv"), (nn.Linear, "linear"), (nn.BatchNorm2d, "bn"), (nn.BatchNorm1d, "bn"),
    (nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.Hardswish, "hardswish"), (nn.Hardsigmoid, "hardsigmoid"),
    (nn.GELU, "gelu"), (nn.SiLU, "silu"), (nn.Sigmoid, "sigmoid"), (nn.LeakyReLU, "leaky_relu"), (nn.ELU, "elu"),
    (nn.Tanh, "tanh"), (nn.Softplus, "softplus"), (nn.Mish, "mish"), (nn.Hardtanh, "hardtanh"),  # ReLU6 first
    (nn.PReLU, "prelu"),
    (nn.MaxPool2d, "maxpool"), (nn.Softmax, "softmax"), (nn.LogSoftmax, "log_softmax"),
    (nn.AvgPool2d, "avgpool"), (nn.AdaptiveAvgPool2d, "adaptive_avgpool"), (nn.AdaptiveMaxPool2d, "adaptive_maxpool"),
    (nn.Flatten, "flatten"))
DEFAULT_INPUT_SHAPE = (1, 3, 32, 32)  # qmap's images are RGB; 32×32 is CIFAR's size (the default input shape)
_NO_OPS = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d)

_FUNCTION_KINDS = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", F.gelu: "gelu", F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.max_pool2d: "maxpool", F.avg_pool2d: "avgpool", F.adaptive_avg_pool2d: "adaptive_avgpool",
    F.adaptive_max_pool2d: "adaptive_maxpool",
    torch.flatten: "flatten", operator.add: "add", torch.add: "add", operator.mul: "mul", torch.mul: "mul",
    torch.cat: "cat", F.pad: "channel_pad", F.leaky_relu: "leaky_relu", F.elu: "elu", torch.tanh: "tanh",
    F.tanh: "tanh", F.softplus: "softplus", F.mish: "mish", F.hardtanh: "hardtanh", F.softmax: "softmax",
    torch.softmax: "softmax", F.log_softmax: "log_softmax", torch.log_softmax: "log_softmax",
}  # + to_channels: "unflatten" (defined below)
# call_method → the function of the same meaning (x.relu() ≡ torch.relu(x) ...)
_METHODS = {"relu": torch.relu, "relu_": torch.relu, "sigmoid": torch.sigmoid, "flatten": torch.flatten,
            "add": torch.add, "mul": torch.mul, "tanh": torch.tanh, "div": torch.div, "sub": torch.sub,
            "neg": torch.neg, "softmax": torch.softmax, "log_softmax": torch.log_softmax}
_NO_OP_FUNCTIONS = (F.dropout, F.dropout2d, torch.dropout)
_NO_OP_METHODS = ("contiguous",)
_DEFAULT_KWARGS = {"_stacklevel": 3, "dtype": None}  # what torch's functional wrappers add (softmax), dropped

SUPPORTED = ("Conv2d (any groups, incl. depthwise), Linear, BatchNorm (fused, or standalone), ReLU, ReLU6, "
             "Hardswish, Hardsigmoid, GELU, SiLU, Sigmoid, LeakyReLU, ELU, Tanh, Softplus, Mish, Hardtanh / clamp, "
             "PReLU (also hand-written: x * relu6(x + 3) / 6, x * sigmoid(x), x * tanh(softplus(x))), MaxPool2d, "
             "AvgPool2d, AdaptiveAvgPool2d / mean over H,W / avg_pool2d(x, x.size(3) or x.size()[2:]), "
             "AdaptiveMaxPool2d / amax over H,W, strided slice x[:, :, ::s, ::s], "
             "flatten / view / reshape to (N, -1) or (b, c), squeeze of a 1x1 map, view(b, c, 1, 1) / unsqueeze twice "
             "/ y[:, :, None, None] of [N, C] features, residual + / "
             "torch.add (alpha too), x - y of two tensors, torch.cat on channels, F.pad of zero channels, "
             "channel pieces (chunk / split / x[:, a:b] on dim 1), channel shuffle (view / transpose / view), "
             "x * c, x / c, x + c, x - c with a number c, "
             "elementwise * (gates, expand_as), softmax / log_softmax on the logits as the last op, "
             "Dropout / Identity; sizes used in Python (int(x.size(1) * r)) are traced on an example")


class GraphTracer(fx.Tracer):
    """Leaves: torch.nn modules, every Conv2d/Linear (incl. quantized subclasses) and modules that state their own
    integer form (``integer_op``)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear)) or hasattr(m, "integer_op") or super().is_leaf_module(m, qualname)


_MODULE_OF = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
              "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU,
              "tanh": nn.Tanh, "softplus": nn.Softplus, "mish": nn.Mish, "hardtanh": nn.Hardtanh,
              "maxpool": nn.MaxPool2d, "softmax": nn.Softmax, "log_softmax": nn.LogSoftmax,
              "avgpool": nn.AvgPool2d, "adaptive_avgpool": nn.AdaptiveAvgPool2d,
              "adaptive_maxpool": nn.AdaptiveMaxPool2d, "flatten": nn.Flatten}
_ARG_NAMES = {"maxpool": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
              "avgpool": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
              "adaptive_avgpool": ("output_size",), "adaptive_maxpool": ("output_size", "return_indices"),
              "gelu": ("approximate",), "flatten": ("start_dim", "end_dim"),
              "leaky_relu": ("negative_slope",), "elu": ("alpha",), "softplus": ("beta", "threshold"),
              "hardtanh": ("min_val", "max_val"), "softmax": ("dim",), "log_softmax": ("dim",)}


def as_module(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The module computing channel-wise ``node``: its own module, or for a functional call the equivalent
    torch.nn module built from the call's arguments (``F.max_pool2d(x, 2)`` → ``nn.MaxPool2d(2)``); None for
    layers and merges."""
    if node.op == "call_module":
        return modules[node.target]
    kind = node_kind(node, modules)
    if kind not in _MODULE_OF:
        return None
    names = _ARG_NAMES.get(kind, ())
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    if kind == "flatten":
        kwargs = {"start_dim": 0} | kwargs  # torch.flatten flattens from dim 0 by default, nn.Flatten from 1
    return _MODULE_OF[kind](**kwargs | dict(zip(names, node.args[1:])))


def module_kind(m: nn.Module) -> str | None:
    if hasattr(m, "integer_op"):
        return "custom"
    return next((k for t, k in _MODULE_KINDS if isinstance(m, t)), None)


def node_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The kind of a node of a *normalised* graph (None: unsupported)."""
    if node.op == "call_module":
        return module_kind(modules[node.target])
    if node.op == "call_function":
        return _FUNCTION_KINDS.get(node.target)
    return None


def describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """``'features.3 (LeakyReLU)'`` / ``'function softmax (node softmax)'`` for error messages."""
    if node.op == "call_module":
        return f"module {node.target} ({type(modules[node.target]).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}() (node {node.name})"
    return f"{node.op} {getattr(node.target, '__name__', node.target)} (node {node.name})"


def _size_of(arg) -> tuple[fx.Node, object] | None:
    """``(t, d)`` for a size expression ``t.size(d)``, ``t.size(dim=d)``, ``t.size()[d]`` or ``t.shape[d]``."""
    if not isinstance(arg, fx.Node) or not arg.args:
        return None
    if arg.op == "call_method" and arg.target == "size":
        dim = arg.args[1] if len(arg.args) > 1 else arg.kwargs.get("dim")
        return (arg.args[0], dim) if dim is not None else None
    if arg.op == "call_function" and arg.target is operator.getitem:
        src = arg.args[0]
        if isinstance(src, fx.Node) and bool(src.args) and (
                (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
                or (src.op == "call_method" and src.target == "size" and len(src.args) == 1)):
            return src.args[0], arg.args[1]
    return None


def _data_of(node):
    """t for ``t.data`` (old code reads sizes off it), else ``node``."""
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target is getattr and node.args[1] == "data":
        return node.args[0]
    return node


def _is_batch_size(arg) -> bool:
    """``t.size(0)``, ``t.shape[0]`` or ``t.size()[0]`` of any tensor t (every tensor shares the batch size)."""
    size = _size_of(arg)
    return size is not None and size[1] == 0


def _view_shape(node: fx.Node) -> tuple:
    shape = node.args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(shape)


def _view_to(node: fx.Node) -> tuple | None:
    """The target shape of a view/reshape that keeps the batch — its first entry the batch size, or −1 before a
    fixed per-sample size (``x.view(-1, self.channels)``) — else None."""
    if not ((node.op == "call_method" and node.target in ("view", "reshape"))
            or (node.op == "call_function" and node.target is torch.reshape)):
        return None
    shape = _view_shape(node)
    if len(shape) == 2 and _is_number(shape[0], -1) and isinstance(shape[1], int) and shape[1] > 0:
        return shape
    return shape if shape and _is_batch_size(shape[0]) else None


def _is_flatten_view(node: fx.Node) -> bool:
    """view/reshape to (N, k): ``x.view(x.size(0), -1)``, ``x.reshape(x.shape[0], -1)``, ``x.view(b, c)`` — a
    2-D view that keeps the batch is a flatten (the user's forward would fail if k were not the per-sample size)."""
    shape = _view_to(node)
    return shape is not None and len(shape) == 2


def _is_channel_view(node: fx.Node) -> bool:
    """view/reshape to (N, k, 1, 1): features back to channels of a 1×1 map."""
    shape = _view_to(node)
    return shape is not None and len(shape) == 4 and all(_is_number(s, 1) for s in shape[2:])


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """[N, C] → [N, C, 1, 1] (the normalised form of ``y.view(b, c, 1, 1)``)."""
    return x.reshape(x.shape[0], -1, 1, 1)


_FUNCTION_KINDS[to_channels] = "unflatten"

def channel_piece(x: torch.Tensor, how: str, arg, i: int) -> torch.Tensor:
    """Piece i of ``x``'s channels: ``x.chunk(arg, 1)[i]`` (how = chunk), ``x.split(arg, 1)[i]`` (split) or
    ``x[:, slice(*arg)]`` (slice) — the normalised form of those spellings."""
    if how == "slice":
        return x[:, slice(*arg)]
    return (torch.chunk if how == "chunk" else torch.split)(x, arg, 1)[i]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: channel g·(C/groups) + j moves to j·groups + g — the normalised form of
    ``x.view(n, groups, C // groups, h, w).transpose(1, 2).view(n, -1, h, w)``."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def gathered_channels(node: fx.Node, channels: int) -> torch.Tensor:
    """The input channel behind each output channel of a ``channel_gather`` node (int64), found by running its
    function on the channel indices themselves."""
    index = torch.arange(channels).reshape(1, channels, 1, 1)
    return node.target(index, *node.args[1:]).reshape(-1)


_FUNCTION_KINDS[channel_piece] = _FUNCTION_KINDS[channel_shuffle] = "channel_gather"


def _dim_is_channels(node: fx.Node, position: int) -> bool:
    dim = node.args[position] if len(node.args) > position else node.kwargs.get("dim", 0)
    return dim in (1, -3) and set(node.kwargs) <= {"dim"}


def _channel_piece_args(node: fx.Node) -> tuple | None:
    """(x, how, arg, i) for piece i of ``x.chunk(n, 1)``, ``torch.split(x, s, dim=1)`` … or for ``x[:, a:b]``."""
    if node.op != "call_function" or node.target is not operator.getitem or not isinstance(node.args[0], fx.Node):
        return None
    src, index = node.args
    if isinstance(index, int):
        for how in ("chunk", "split"):
            if ((src.op == "call_method" and src.target == how) or (src.op == "call_function"
                                                                     and src.target is getattr(torch, how))) \
                    and _dim_is_channels(src, 2) and len(src.args) >= 2 and not isinstance(src.args[1], fx.Node):
                return src.args[0], how, src.args[1], index
        return None
    if not isinstance(index, tuple) or len(index) < 2 or index[0] != slice(None) or not isinstance(index[1], slice):
        return None
    rest = [i for i in index[2:] if i is not Ellipsis]
    bounds = (index[1].start, index[1].stop, index[1].step)
    if any(i != slice(None) for i in rest) or index[1] == slice(None) or \
            not all(b is None or isinstance(b, int) for b in bounds):
        return None
    return src, "slice", bounds, 0


def _shuffle_groups(node: fx.Node) -> tuple[fx.Node, int] | None:
    """(x, groups) for ``view(n, −1, h, w)`` / ``reshape`` / ``flatten(1, 2)`` of ``transpose(1, 2)`` /
    ``permute(0, 2, 1, 3, 4)`` of ``x.view(n, groups, C // groups, h, w)`` (h, w: x's own sizes)."""
    if node.op == "call_method" and node.target == "flatten" and tuple(node.args[1:]) == (1, 2):
        swapped = node.args[0]
    elif _view_to(node) is not None and len(_view_shape(node)) == 4:
        swapped = node.args[0]
    else:
        return None
    if not isinstance(swapped, fx.Node) or len(swapped.users) != 1:
        return None
    if not ((swapped.target in ("transpose", torch.transpose) and tuple(swapped.args[1:]) in ((1, 2), (2, 1)))
            or (swapped.target == "permute" and tuple(_view_shape(swapped)) == (0, 2, 1, 3, 4))):
        return None
    split = swapped.args[0]
    if not isinstance(split, fx.Node) or len(split.users) != 1 or (shape := _view_to(split)) is None:
        return None
    x = split.args[0]

    def height_width(h, w) -> bool:
        return _is_spatial_size(h, x, (2, -2)) and _is_spatial_size(w, x, (3, -1))
    if len(shape) != 5 or not isinstance(shape[1], int) or isinstance(shape[1], bool) or shape[1] < 1 or \
            not height_width(*shape[3:]):
        return None
    if len(_view_shape(node)) == 4 and not height_width(*_view_shape(node)[2:]):
        return None
    return x, shape[1]


_SCALAR_OPS = {"mul": operator.mul, "div": operator.truediv, "add": operator.add, "sub": operator.sub,
               "rsub": lambda x, c: c - x}


def scalar_op(x: torch.Tensor, op: str, c: float) -> torch.Tensor:
    """``x * c``, ``x / c``, ``x + c``, ``x − c`` or ``c − x`` (``op`` mul, div, add, sub, rsub) for a number c,
    computed as written (the normalised form of scalar arithmetic on a tensor; ``−x`` is ``x * −1``)."""
    return _SCALAR_OPS[op](x, c)


def scalar_affine(op: str, c: float) -> tuple[float, float]:
    """(a, b) with ``scalar_op(x, op, c)`` = a·x + b."""
    if op == "div":  # (``_scalar_form`` never builds a division by 0)
        return 1 / c, 0.0
    return {"mul": (c, 0.0), "add": (1.0, c), "sub": (1.0, -c), "rsub": (-1.0, c)}[op]


_FUNCTION_KINDS[scalar_op] = "affine"
_ARITHMETIC = {operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
               operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub"}


def _is_size_value(arg) -> bool:
    """Whether ``arg`` is a number computed from tensor sizes (``x.size(1) // g``), not a tensor."""
    if not isinstance(arg, fx.Node):
        return False
    if (arg.op == "call_method" and arg.target == "size") or (arg.op == "call_function" and arg.target is getattr):
        return True
    return arg.op == "call_function" and (arg.target is operator.getitem or arg.target in _ARITHMETIC
                                          or arg.target is operator.floordiv) and any(
        _is_size_value(a) for a in arg.args)


def _scalar_form(node: fx.Node) -> tuple[fx.Node, str, float] | None:
    """(x, op, c) when ``node`` is scalar arithmetic on a tensor x (see :func:`scalar_op`), else None."""
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target in (operator.neg, torch.neg) and len(node.args) == 1 and not _is_size_value(node.args[0]):
        return node.args[0], "mul", -1.0
    op = _ARITHMETIC.get(node.target)
    if op is None or len(node.args) != 2:
        return None
    a, b = node.args
    number = (int, float)
    if isinstance(a, fx.Node) and isinstance(b, number) and not isinstance(b, bool) and not _is_size_value(a):
        return (a, op, float(b)) if not (op == "div" and b == 0) else None
    if isinstance(b, fx.Node) and isinstance(a, number) and not isinstance(a, bool) and not _is_size_value(b) \
            and op != "div":
        return b, "rsub" if op == "sub" else op, float(a)
    return None


def _sum_form(node: fx.Node) -> tuple[fx.Node, fx.Node, float] | None:
    """(x, y, c) when ``node`` computes x + c·y of two tensors other than as a plain ``x + y``:
    ``torch.add(x, y, alpha=c)`` / ``x.add(y, alpha=c)``, ``x - y`` (c = −1), ``torch.sub(x, y, alpha=a)``
    (c = −a); else None."""
    op = _ARITHMETIC.get(node.target) if node.op == "call_function" else node.target if node.op == "call_method" \
        else None
    if op not in ("add", "sub") or len(node.args) != 2 or set(node.kwargs) - {"alpha"}:
        return None
    x, y = node.args
    alpha = node.kwargs.get("alpha", 1)
    if not (isinstance(x, fx.Node) and isinstance(y, fx.Node)) or _is_size_value(x) or _is_size_value(y) \
            or not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or (op == "add" and alpha == 1):
        return None
    return x, y, float(alpha if op == "add" else -alpha)


def _is_broadcast_expand(node: fx.Node) -> bool:
    """``g.expand_as(x)`` whose users are all elementwise ``*`` / ``+`` (which broadcast g anyway)."""
    return (node.op == "call_method" and node.target == "expand_as" and bool(node.users)
            and all(u.op in ("call_function", "call_method") and u.target in (operator.mul, torch.mul, "mul",
                                                                            operator.add, torch.add, "add")
                    for u in node.users))


def _is_spatial_squeeze(node: fx.Node) -> bool:
    """``x.squeeze()``, ``x.squeeze(-1)``, ``torch.squeeze(x, (2, 3))`` …: dropping size-1 spatial dims of a
    [N, C, 1, 1] map is a flatten (checked against the recorded shapes; the batch dim is never dropped)."""
    if not ((node.op == "call_method" and node.target == "squeeze")
            or (node.op == "call_function" and node.target is torch.squeeze)):
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = () if dims is None else tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    return all(d in (2, 3, -1, -2) for d in dims) and not node.args[2:]


def _spatial_reduction(node: fx.Node):
    """The global pool of ``x.mean((2, 3))`` / ``x.amax((2, 3))`` (also ``torch.mean`` / ``torch.amax``, keepdim
    or not): ``F.adaptive_avg_pool2d`` / ``F.adaptive_max_pool2d``, else None."""
    pool = {"mean": F.adaptive_avg_pool2d, "amax": F.adaptive_max_pool2d}.get(
        node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
        if node.op == "call_function" and node.target in (torch.mean, torch.amax) else None)
    if pool is None:
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    spatial = sorted(d % 4 if isinstance(d, int) else d for d in dims) == [2, 3]
    return pool if spatial and node.args[2:] in ((), (True,), (False,)) else None


def _is_spatial_size(arg, of: fx.Node, dims: tuple = (2, 3, -1, -2)) -> bool:
    """``of.size(d)``, ``of.size()[d]``, ``of.shape[d]`` (also of ``of.data``) for d in ``dims``; or, in a graph
    traced with sizes (:class:`_SizedTracer`), the number that size was."""
    if isinstance(arg, int) and not isinstance(arg, bool) and (shape := of.meta.get("example_shape")) is not None:
        return any(arg == shape[d] for d in dims if -len(shape) <= d < len(shape))
    size = _size_of(arg)
    return size is not None and _data_of(size[0]) is of and size[1] in dims


def _self_sized_avg_pool(node: fx.Node) -> str | None:
    """For ``F.avg_pool2d(x, x.size()[2:])`` (``x.shape[2:]``): "map", a window as large as the map; for
    ``F.avg_pool2d(x, x.size()[3])``: "square", the map's width as a square window (global on a square map);
    else None (stride defaults to the window)."""
    if not (node.op == "call_function" and node.target is F.avg_pool2d and len(node.args) == 2 and not node.kwargs):
        return None
    size = _size_of(node.args[1])
    if size is not None and _data_of(size[0]) is node.args[0] and size[1] in (slice(2, None), slice(-2, None)):
        return "map"
    return "square" if _is_spatial_size(node.args[1], node.args[0]) else None


def _is_unsqueeze(node, dims: tuple) -> bool:
    return (isinstance(node, fx.Node) and ((node.op == "call_method" and node.target == "unsqueeze")
                                           or (node.op == "call_function" and node.target is torch.unsqueeze))
            and len(node.args) == 2 and not node.kwargs and node.args[1] in dims)


def _channels_of_features(node: fx.Node) -> fx.Node | None:
    """y for ``y.unsqueeze(-1).unsqueeze(-1)`` (any two dims after the channels) or ``y[:, :, None, None]`` /
    ``y[..., None, None]`` — [N, C] features to a 1×1 map when y is 2-D (checked against the recorded shapes)."""
    if _is_unsqueeze(node, (2, 3, -1, -2)) and _is_unsqueeze(node.args[0], (2, -1)) \
            and len(node.args[0].users) == 1:
        return node.args[0].args[0]
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node) \
            and node.args[1] in ((slice(None), slice(None), None, None), (Ellipsis, None, None)):
        return node.args[0]
    return None


def _slice_stride(node: fx.Node) -> tuple[int, int] | None:
    """(s_h, s_w) for ``x[:, :, ::s_h, ::s_w]`` / ``x[..., ::s_h, ::s_w]`` (whole range, positive steps), else None."""
    if node.op != "call_function" or node.target is not operator.getitem or not isinstance(node.args[0], fx.Node):
        return None
    index = node.args[1]
    if not isinstance(index, tuple) or not all(isinstance(i, slice) or i is Ellipsis for i in index):
        return None
    if index[:1] == (Ellipsis,):
        index = (slice(None),) * 2 + index[1:]
    if len(index) != 4 or any(i != slice(None) for i in index[:2]):
        return None
    steps = []
    for i in index[2:]:
        if i.start not in (None, 0) or i.stop is not None or not (i.step is None or isinstance(i.step, int)):
            return None
        steps.append(i.step or 1)
    return tuple(steps) if min(steps) >= 1 else None


def channel_padding(node: fx.Node) -> tuple[int, int] | None:
    """(a, b) for ``F.pad(x, (0, 0, 0, 0, a, b))`` with zeros (mode constant, value 0), else None."""
    args = dict(zip(("input", "pad", "mode", "value"), node.args)) | dict(node.kwargs)
    pad = args.get("pad")
    if (not isinstance(pad, (tuple, list)) or len(pad) != 6 or any(pad[:4]) or args.get("mode", "constant")
            != "constant" or args.get("value") not in (None, 0, 0.0)
            or not all(isinstance(p, int) and p >= 0 for p in pad)):
        return None
    return pad[4], pad[5]


def _is_number(a, value: float) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and abs(a - value) < 1e-12


def _call(node, functions: tuple) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in functions and not node.kwargs


def _other(node: fx.Node, value: float):
    """For a two-argument node with the number ``value`` as one argument: the other argument (else None)."""
    a, b = (node.args + (None, None))[:2]
    return b if _is_number(a, value) else a if _is_number(b, value) else None


def _over_six(node) -> fx.Node | None:
    """t for ``t / 6``, ``t * (1/6)``, ``(1/6) * t``."""
    if _call(node, (operator.truediv, torch.div)) and len(node.args) == 2 and _is_number(node.args[1], 6):
        return node.args[0]
    return _other(node, 1 / 6) if _call(node, (operator.mul, torch.mul)) else None


def _relu6_input(node, modules) -> fx.Node | None:
    """t for ``relu6(t)``, ``nn.ReLU6()(t)``, ``hardtanh(t, 0, 6)``."""
    if isinstance(node, fx.Node) and node_kind(node, modules) == "relu6":
        return node.args[0]
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target is F.hardtanh:
        a, kw = node.args, node.kwargs
        low, high = a[1] if len(a) > 1 else kw.get("min_val", -1.0), a[2] if len(a) > 2 else kw.get("max_val", 1.0)
        if _is_number(low, 0) and _is_number(high, 6):
            return node.args[0]
    return None


def _plus_three(node) -> fx.Node | None:
    return _other(node, 3) if _call(node, (operator.add, torch.add)) else None


def _hard_sigmoid_input(node, modules) -> fx.Node | None:
    """x for ``relu6(x + 3)``."""
    return _plus_three(_relu6_input(node, modules))


def _times_own(node, inner) -> fx.Node | None:
    """x for ``x * f(x)`` / ``f(x) * x`` where ``inner(f(x))`` returns x."""
    if not _call(node, (operator.mul, torch.mul)) or len(node.args) != 2:
        return None
    a, b = node.args
    for x, f in ((a, b), (b, a)):
        if isinstance(x, fx.Node) and inner(f) is x:
            return x
    return None


def _plain_kwargs(node: fx.Node) -> dict:
    """The call's keyword arguments without ``inplace`` and the defaults torch's functional wrappers record
    (softmax's ``_stacklevel``, ``dtype=None``)."""
    return {k: v for k, v in node.kwargs.items()
            if k != "inplace" and not (k in _DEFAULT_KWARGS and v == _DEFAULT_KWARGS[k])}


def _clamp_form(node: fx.Node) -> tuple | None:
    """(function, args) of the activation ``x.clamp(lo, hi)`` / ``torch.clamp`` / ``clip`` computes with numbers lo,
    hi: relu for (0, None), relu6 for (0, 6), hardtanh(x, lo, hi) for any other pair; None otherwise."""
    if not ((node.op == "call_method" and node.target in ("clamp", "clip", "clamp_", "clip_"))
            or (node.op == "call_function" and node.target in (torch.clamp, torch.clip))):
        return None
    args = dict(zip(("input", "min", "max"), node.args)) | dict(node.kwargs)
    x, lo, hi = args.get("input"), args.get("min"), args.get("max")
    if not isinstance(x, fx.Node) or set(args) - {"input", "min", "max"} or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in (lo, hi)):
        return None
    if _is_number(lo, 0) and hi is None:
        return F.relu, (x,)
    if _is_number(lo, 0) and _is_number(hi, 6):
        return F.relu6, (x,)
    return (F.hardtanh, (x, float(lo), float(hi))) if lo is not None and hi is not None and lo < hi else None


def _fold_idioms(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Replace hand-written h-swish / hard-sigmoid / SiLU / Mish and ``hardtanh(x, 0, 6)`` (see the module
    docstring) by the functional op; the
    pieces left without users are removed by the caller's dead-code pass."""
    def input_of(kind: str):
        return lambda n: n.args[0] if isinstance(n, fx.Node) and node_kind(n, modules) == kind else None

    def hard_sigmoid(n):  # relu6(x + 3) / 6
        return _hard_sigmoid_input(_over_six(n), modules)

    def hard_swish_over_six(n):  # x * relu6(x + 3) / 6, the "/ 6" outside the product
        product = _over_six(n)
        return product and _times_own(product, lambda f: _hard_sigmoid_input(f, modules))

    def plain_softplus(n):  # softplus(x) with β = 1 (Mish's)
        return n.args[0] if input_of("softplus")(n) is not None and len(n.args) == 1 and not n.kwargs else None

    rules = ((F.hardswish, hard_swish_over_six),  # in order: x * hardsigmoid(x) reads the hard-sigmoids folded
             (F.hardsigmoid, hard_sigmoid),           # by the rule before it
             (F.hardswish, lambda n: _times_own(n, input_of("hardsigmoid"))),
             (F.silu, lambda n: _times_own(n, input_of("sigmoid"))),
             (F.mish, lambda n: _times_own(n, lambda f: plain_softplus(input_of("tanh")(f)))),
             (F.relu6, lambda n: _relu6_input(n, modules) if n.target is F.hardtanh else None))
    for op, match in rules:
        for node in list(graph.nodes):
            if node.op != "call_function" or (x := match(node)) is None:
                continue
            with graph.inserting_after(node):
                new = graph.call_function(op, (x,))
            node.replace_all_uses_with(new)
            graph.erase_node(node)


def normalise(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm`` in place onto the vocabulary above (same function); returns it."""
    graph = gm.graph
    modules = dict(gm.named_modules())
    for node in list(graph.nodes):
        target = node.target
        if (node.op == "call_module" and isinstance(modules[target], _NO_OPS)) or (
                node.op == "call_function" and target in _NO_OP_FUNCTIONS) or (
                node.op == "call_method" and target in _NO_OP_METHODS):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        new = None
        with graph.inserting_after(node):
            if _is_flatten_view(node):
                new = graph.call_function(torch.flatten, (node.args[0], 1))
                if isinstance(size := _view_shape(node)[1], int) and size > 0:
                    new.meta["flat_size"] = size  # view(-1, k) / view(b, k): checked against the recorded shapes
            elif (clamp := _clamp_form(node)) is not None:
                new = graph.call_function(*clamp)
            elif (piece := _channel_piece_args(node)) is not None:
                new = graph.call_function(channel_piece, piece)
            elif (shuffle := _shuffle_groups(node)) is not None:
                new = graph.call_function(channel_shuffle, shuffle)
            elif _is_spatial_squeeze(node):
                new = graph.call_function(torch.flatten, (node.args[0], 1))
                new.meta["squeeze"] = True  # the input's dims after C must all be 1: checked against the shapes
            elif _is_channel_view(node):
                new = graph.call_function(to_channels, (node.args[0],))
            elif _is_broadcast_expand(node):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                continue
            elif (window := _self_sized_avg_pool(node)) is not None:
                new = graph.call_function(F.adaptive_avg_pool2d, (node.args[0], 1))
                new.meta["square_map"] = window == "square"  # the premise, checked against the recorded shapes
            elif (features := _channels_of_features(node)) is not None:
                new = graph.call_function(to_channels, (features,))
                new.meta["from_features"] = True  # y must be [N, C]: checked against the recorded shapes
            elif (stride := _slice_stride(node)) is not None:
                new = graph.call_function(F.max_pool2d, (node.args[0], 1, stride))
            elif (pool := _spatial_reduction(node)) is not None:
                keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
                new = graph.call_function(pool, (node.args[0], 1))
                if not keep:
                    with graph.inserting_after(new):
                        new = graph.call_function(torch.flatten, (new, 1))
            elif (terms := _sum_form(node)) is not None:  # x + c·y: the scaling becomes scalar arithmetic below
                x, y, c = terms
                scaled = graph.call_function(operator.mul, (y, c))
                with graph.inserting_after(scaled):
                    new = graph.call_function(operator.add, (x, scaled))
            elif node.op == "call_method" and target in _METHODS:
                new = graph.call_function(_METHODS[target], node.args, node.kwargs)
            elif node.op == "call_function" and target in _FUNCTION_KINDS and _plain_kwargs(node) != node.kwargs:
                new = graph.call_function(target, node.args, _plain_kwargs(node))
        if new is not None:
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    _fold_idioms(graph, modules)
    graph.eliminate_dead_code()
    for node in list(graph.nodes):  # after the idioms: their "/ 6" and "+ 3" are scalar arithmetic too
        if (form := _scalar_form(node)) is not None:
            with graph.inserting_after(node):
                new = graph.call_function(scalar_op, form)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    gm.recompile()
    return gm


class _SizedProxy(fx.Proxy):
    """A traced value whose example is known (:class:`_SizedTracer`): its channel and spatial sizes are numbers,
    its batch size stays a graph value (``x.view(x.size(0), -1)`` works for any batch)."""

    def size(self, dim: int | None = None):
        value = self.tracer.values.get(self.node)
        if not isinstance(value, torch.Tensor):
            return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})
        if dim is None:
            return (self.tracer.create_proxy("call_method", "size", (self, 0), {}), *value.shape[1:])
        if dim in (0, -value.dim()):
            return self.tracer.create_proxy("call_method", "size", (self, 0), {})
        return value.size(dim)

    @property
    def shape(self):
        return self.size()

    def dim(self):
        value = self.tracer.values.get(self.node)
        return value.dim() if isinstance(value, torch.Tensor) else self.tracer.create_proxy("call_method", "dim",
                                                                                            (self,), {})


class _SizedTracer(GraphTracer):
    """:class:`GraphTracer` that also runs every op it records on one example input (batch 1), so sizes other
    than the batch are numbers a forward may compute with in Python (``int(x.size(1) * ratio)``, ShuffleNetV2's
    channel split). fx has no such tracer for real tensors (its ``MetaTracer`` moves parameters to the meta
    device and fails on BatchNorm buffers), hence this one: while an op runs on the example, module calls and
    attribute reads go straight to the modules instead of into the graph."""

    def __init__(self, example: torch.Tensor):
        super().__init__()
        self.example, self.values, self.running = example, {}, False

    def proxy(self, node: fx.Node) -> _SizedProxy:
        return _SizedProxy(node, self)

    def call_module(self, m, forward, args, kwargs):
        return forward(*args, **kwargs) if self.running else super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self.running else super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        known = True

        def value(a):
            nonlocal known
            if isinstance(a, fx.Proxy):
                known = known and a.node in self.values
                return self.values.get(a.node)
            return a

        a, kw = fx.node.map_aggregate(args, value), fx.node.map_aggregate(kwargs, value)
        if kind == "placeholder" or not known:
            if kind == "placeholder":
                self.values[proxy.node] = self.example
            return proxy
        self.running = True
        try:
            with torch.no_grad():
                if kind == "call_module":
                    self.values[proxy.node] = self.root.get_submodule(target)(*a, **kw)
                elif kind == "call_function":
                    self.values[proxy.node] = target(*a, **kw)
                elif kind == "call_method":
                    self.values[proxy.node] = getattr(a[0], target)(*a[1:], **kw)
                elif kind == "get_attr":
                    self.values[proxy.node] = operator.attrgetter(target)(self.root)
            if isinstance(v := self.values.get(proxy.node), torch.Tensor):
                proxy.node.meta["example_shape"] = tuple(v.shape)
        except Exception:  # noqa: BLE001 - an op that does not run here: its sizes stay symbolic
            pass
        finally:
            self.running = False
        return proxy


def _sized_trace(model: nn.Module, input_shape: tuple[int, ...]) -> fx.Graph:
    param = next(iter(model.parameters()), None)
    example = torch.zeros(1, *input_shape[1:], device=None if param is None else param.device)
    return _SizedTracer(example).trace(model)


def trace(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """The normalised fx graph of ``model`` (submodules shared, not copied).

    A forward that fx cannot trace symbolically because it computes with a size in Python (``int(x.size(1) * r)``)
    is traced again with sizes: those of ``input_shape`` (default ``DEFAULT_INPUT_SHAPE``), the batch size left
    free. The graph then holds the numbers it computed (a channel split of 58 stays 58 — channel counts do not
    depend on the input; a size taken from H or W is that of ``input_shape``, checked when a
    :class:`~qmap.nn.ModelGraph` records shapes of the real input)."""
    try:
        graph = GraphTracer().trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, ...) for data-dependent control flow
        try:
            graph = _sized_trace(model, input_shape or DEFAULT_INPUT_SHAPE)
        except Exception:  # noqa: BLE001 - the symbolic trace's error is the one that explains
            raise ConfigError(f"cannot trace {type(model).__name__} with torch.fx: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) from None
    return normalise(fx.GraphModule(model, graph, class_name=type(model).__name__))
