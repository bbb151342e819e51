"""Layer lookup and multi-layer forward passes for any Keras 3 model.

Keras 3 no longer lets you build ``keras.Model(model.input, inner_layer.output)`` for a
layer inside a nested model ("Graph disconnected"), which is why keract and friends
break on transfer-learning models. kerascope instead *interprets* the model's own graph:
it walks the nodes of every Functional and Sequential model (recursing into nested
ones), calls each layer exactly as the model would, in inference mode, and keeps the
outputs of the layers the caller asked for. One pass yields every selected layer, works
inside ``tf.function`` and under ``tf.GradientTape``, and never modifies the model.

Layer paths:
    * a top-level layer is addressed by its name (``conv2d``);
    * a layer inside a nested model by ``outer/inner`` (``base/block1_conv1``);
    * a layer called more than once in the same graph (a shared layer) by ``name`` for
      its first call and ``name@1``, ``name@2``, ... for later calls.
"""

from __future__ import annotations

import fnmatch
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras

from pipeline.errors import KerascopeError, choices_hint

_SOFTMAX_NAMES = {"softmax", "sigmoid"}

# Compiled functions per model. Weak keys: a model (say a randomised clone) that is
# garbage collected must never hand its functions to a later model reusing its id.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(model: keras.Model, key: tuple, build: Callable[[], Callable]) -> Callable:
    """Return the compiled function cached for ``(model, key)``, building it once.

    Tracing a ``tf.function`` costs far more than running it on a batch, so every
    tensor module caches its compiled steps per model and per option set.
    """
    per_model = _COMPILED.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


@dataclass(frozen=True)
class LayerInfo:
    """One addressable call of a layer in a (possibly nested) model graph.

    Attributes:
        path: The address used in configs and HDF5 files (``base/block1_conv1``).
        layer: The Keras layer object.
        call_index: Which call of a shared layer this is (0 for the first).
        position: Topological position in the flattened graph (0 = first layer run).
        output_shape: Symbolic output shape without the batch axis, or None if unknown.
    """

    path: str
    layer: keras.layers.Layer
    call_index: int
    position: int
    output_shape: tuple | None = field(default=None)

    @property
    def class_name(self) -> str:
        """The layer's class name, for example ``Conv2D``."""
        return type(self.layer).__name__


def graph_of(model: keras.Model):
    """The Functional graph that executes ``model``, or None for subclassed models."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise KerascopeError(
                f"model '{model.name}' is a Sequential model that has not been built; "
                "give it an Input layer or call model.build(input_shape) first"
            )
        return functional
    if hasattr(model, "_nodes_by_depth") and getattr(model, "_nodes_by_depth", None):
        return model
    return None


def functional_of(model: keras.Model, input_shape: Sequence[int] | None = None) -> keras.Model:
    """A subclassed model as a Functional model over the same layers and variables.

    A ``keras.Model`` subclass with a custom ``call`` has no graph to walk (tf-explain
    issue 55). Its ``call`` is traced once on a ``keras.Input``: where it uses Keras
    layers and ``keras.ops`` only, every layer it calls becomes a node of the new graph,
    addressable by its name (layer-level methods work). Where the trace fails (TensorFlow
    ops or Python branches on values), the model becomes one opaque layer: methods that
    need only ``model(x)`` work, and layer-level ones refuse in one line. Functional and
    Sequential models are returned as they are.

    Args:
        model: A model; a subclassed one must be built (called once, or loaded from a
            ``.keras`` file that recorded its input shape) unless ``input_shape`` is given.
        input_shape: Its input shape without the batch axis, if it was never built.

    Raises:
        KerascopeError: A subclassed model whose input shape is unknown.
    """
    if not isinstance(model, keras.Model) or isinstance(model, keras.Sequential):
        return model
    if graph_of(model) is not None:
        return model
    if input_shape is None:
        built = (model.get_build_config() or {}).get("input_shape") if model.built else None
        if not built or not isinstance(built[0], int | type(None)):
            raise KerascopeError(
                f"subclassed model '{model.name}' was never built, so its input shape is "
                "unknown; call it once on a batch (or model.build(shape)) before saving"
            )
        input_shape = tuple(built[1:])
    inputs = keras.Input(tuple(input_shape), name="input")
    try:
        outputs = model.call(inputs)  # the layers inside call() become graph nodes
        traced = keras.Model(inputs, outputs, name=model.name)
        traced.kerascope_subclassed = "traced"
        return traced
    except Exception:  # noqa: BLE001 - any tracing failure falls back to one opaque layer
        opaque = keras.Model(inputs, model(inputs), name=f"{model.name}_wrapper")
        opaque.kerascope_subclassed = "opaque"
        return opaque


def _opaque_models(model: keras.Model) -> list[str]:
    """Names of subclassed models inside ``model``'s graph that kerascope cannot open."""
    graph = graph_of(model)
    if graph is None:
        return [model.name]
    return [
        node.operation.name
        for node in ordered_nodes(graph)
        if isinstance(node.operation, keras.Model) and graph_of(node.operation) is None
    ]


def ordered_nodes(graph) -> list:
    """The graph's computing nodes in execution order (deepest first, as Keras runs them)."""
    nodes = []
    for depth in sorted(graph._nodes_by_depth.keys(), reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def node_names(graph) -> list[tuple[object, str, int]]:
    """Each computing node of ``graph``, its local name (``name`` or ``name@k``), call index."""
    counts: dict[int, int] = {}
    named = []
    for node in ordered_nodes(graph):
        op = node.operation
        k = counts.get(id(op), 0)
        counts[id(op)] = k + 1
        named.append((node, op.name if k == 0 else f"{op.name}@{k}", k))
    return named


def _shape_without_batch(node) -> tuple | None:
    outputs = node.outputs
    if len(outputs) != 1:
        return None
    shape = getattr(outputs[0], "shape", None)
    return tuple(shape[1:]) if shape is not None else None


def list_layers(model: keras.Model) -> list[LayerInfo]:
    """List every addressable layer call of ``model``, nested models included.

    Args:
        model: A built Sequential, Functional or subclassed Keras model. Subclassed
            models have no inspectable graph, so only their direct sub-layers that are
            themselves models are not expanded.

    Returns:
        Layer calls in execution order. Input layers are not listed.
    """
    infos: list[LayerInfo] = []

    def visit(graph, prefix: str) -> None:
        for node, local, k in node_names(graph):
            op = node.operation
            path = f"{prefix}{local}"
            infos.append(LayerInfo(path, op, k, len(infos), _shape_without_batch(node)))
            if isinstance(op, keras.Model):
                inner = graph_of(op)
                if inner is not None:
                    visit(inner, f"{path}/")

    graph = graph_of(model)
    if graph is None:
        raise KerascopeError(
            f"model '{model.name}' is a subclassed model with no layer graph; wrap its "
            "layers in a Functional or Sequential model to inspect them"
        )
    visit(graph, "")
    return infos


def resolve_layers(model: keras.Model, selection: str | Sequence[str]) -> list[str]:
    """Turn a user's layer selection into concrete layer paths.

    Args:
        model: The model to search.
        selection: ``"all"``; or one or more entries, each an exact path
            (``base/block1_conv1``), a glob over paths (``conv*``, ``base/*``), or a
            layer class name (``Conv2D``, ``Dense``).

    Returns:
        Matching paths in execution order, without duplicates.

    Raises:
        KerascopeError: An entry matches nothing; the message lists close matches.
    """
    infos = list_layers(model)
    if isinstance(selection, str):
        selection = [selection]
    selection = list(selection)
    if not selection:
        raise KerascopeError("layer selection is empty; use 'all', names, globs or class names")
    chosen: set[str] = set()
    for entry in selection:
        entry = str(entry)
        if entry == "all":
            matched = {i.path for i in infos}
        else:
            matched = {
                i.path
                for i in infos
                if i.path == entry or fnmatch.fnmatchcase(i.path, entry) or i.class_name == entry
            }
        if not matched:
            valid = [i.path for i in infos] + sorted({i.class_name for i in infos})
            raise KerascopeError(f"no layer matches '{entry}'; {choices_hint(entry, valid)}")
        chosen |= matched
    return [i.path for i in infos if i.path in chosen]


def layer_info(model: keras.Model, path: str) -> LayerInfo:
    """Look up one layer call by exact path.

    Raises:
        KerascopeError: ``path`` is not a layer path of ``model``.
    """
    infos = list_layers(model)
    for info in infos:
        if info.path == path:
            return info
    raise KerascopeError(f"no layer named '{path}'; {choices_hint(path, [i.path for i in infos])}")


def is_spatial(info: LayerInfo) -> bool:
    """Whether a layer's output has spatial or temporal axes (rank >= 2 without batch)."""
    return info.output_shape is not None and len(info.output_shape) >= 2


#: Fewest positions per spatial axis a class activation map needs to say *where*.
#: Selvaraju et al. (2017) map VGG-16's 14x14 conv5_3; 7x7 is the last block of a
#: ResNet at 224x224. Smaller maps (a 4x4 class-score convolution before global
#: pooling, say) mostly say "somewhere in the middle".
MIN_CAM_EXTENT = 7

#: Layer keywords that adapt a configuration to any architecture.
KEYWORDS = ("output", "last_conv", "last_hidden")


#: Layers that only move values around (pad, crop, reshape, drop): never a CAM layer.
_NOT_FEATURES = ("ZeroPadding", "Cropping", "Reshape", "Permute", "Dropout", "SpatialDropout")


def _spatial_layers(model: keras.Model) -> list[LayerInfo]:
    spatial = [
        i
        for i in list_layers(model)
        if is_spatial(i)
        and not isinstance(i.layer, keras.Model)
        and not i.class_name.startswith(_NOT_FEATURES)
    ]
    opaque = _opaque_models(model)
    if not spatial and opaque:
        raise KerascopeError(
            f"the layers of subclassed model '{opaque[0]}' are out of reach (its call() "
            "uses non-Keras ops); build it with Keras layers and keras.ops only, or as a "
            "Functional model, for CAMs; gradient and black-box methods work as they are"
        )
    if not spatial:
        raise KerascopeError(
            f"model '{model.name}' has no layer with a spatial or time axis; class "
            "activation maps need a convolutional or recurrent layer with return_sequences=True"
        )
    return spatial


@dataclass(frozen=True)
class TokenGrid:
    """How a token layer's sequence (T, C) lies over the image: a patch grid.

    Attributes:
        height: Patch rows.
        width: Patch columns.
        class_token: The first token is a class token, not a patch (dropped on the grid).
    """

    height: int
    width: int
    class_token: bool

    def describe(self) -> str:
        """One line for reports: ``7x7 patch tokens, class token dropped``."""
        extra = ", class token dropped" if self.class_token else ""
        return f"{self.height}x{self.width} patch tokens{extra}"


def token_grids(model: keras.Model) -> dict[str, TokenGrid]:
    """The layers whose outputs are patch-token sequences, and their patch grid.

    A ViT cuts an image into a grid of patches (a strided Conv2D, then a Reshape to
    tokens) and may prepend a class token. A layer with a (T, C) output, in a model
    with image inputs, is a token layer when an earlier layer has a 2-D output (h, w,
    K) with ``h * w == T`` (patches only) or ``h * w + 1 == T`` (a class token first,
    as in Dosovitskiy et al. 2021); the last such earlier layer gives the grid. Layers
    reading image rows as time steps (an LSTM over rows) have no earlier 2-D layer, so
    they stay sequences.

    Returns:
        Layer path -> :class:`TokenGrid`, for every token layer.
    """
    inputs = list(model.inputs or [])
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        return {}
    grids: dict[str, TokenGrid] = {}
    last_map: tuple[int, int] | None = None
    for info in list_layers(model):
        shape = info.output_shape
        if shape is None or isinstance(info.layer, keras.Model):
            continue
        if len(shape) == 3 and shape[0] and shape[1]:
            last_map = (int(shape[0]), int(shape[1]))
        elif len(shape) == 2 and last_map is not None and shape[0]:
            patches = last_map[0] * last_map[1]
            if shape[0] in (patches, patches + 1):
                grids[info.path] = TokenGrid(*last_map, class_token=shape[0] == patches + 1)
    return grids


def attention_layers(model: keras.Model) -> list[str]:
    """Paths of the ``keras.layers.MultiHeadAttention`` calls, first layer first."""
    return [
        i.path for i in list_layers(model) if isinstance(i.layer, keras.layers.MultiHeadAttention)
    ]


def _vit_cam_layer(model: keras.Model) -> str | None:
    """The token layer feeding the last attention layer (its query), or None.

    After the last attention, only the class token reaches the classifier, so the
    gradient of the class score with respect to the patch tokens of later layers is
    zero and a CAM there is blank; the input of the last attention is the last place
    where patch tokens still flow into the class token (pytorch-grad-cam uses
    ``blocks[-1].norm1`` of a timm ViT for this reason).
    """
    grids = token_grids(model)
    attention = [p for p in attention_layers(model) if "@" not in p.rsplit("/", 1)[-1]]
    if not grids or not attention:
        return None
    infos = [i for i in list_layers(model)]
    index = {info.path: k for k, info in enumerate(infos)}
    last = index[attention[-1]]
    feeding = [a for a, b in layer_edges(model, infos) if b == last and infos[a].path in grids]
    return infos[max(feeding)].path if feeding else None


def default_cam_layer(model: keras.Model) -> str:
    """The layer class activation maps use by default, and what ``last_conv`` names.

    The rule: the last layer (nested model boxes and layers that only pad, crop,
    reshape or drop skipped) whose output keeps every
    spatial or time axis at :data:`MIN_CAM_EXTENT` or more positions and is not a
    class-score map (as many channels as the model has outputs, with no layer holding
    weights after it: the 1x1 convolution some nets put right before global pooling).
    If no layer is that large, the last spatial layer.

    A vision transformer (patch-token layers, see :func:`token_grids`, and
    ``MultiHeadAttention``) instead gets the token layer feeding its last attention
    layer (see :func:`_vit_cam_layer`): later token layers reach the class score
    through the class token only, so their patch tokens carry no gradient.

    Raises:
        KerascopeError: The model has no layer with a spatial or temporal output.
    """
    spatial = _spatial_layers(model)
    vit_layer = _vit_cam_layer(model)
    if vit_layer is not None:
        return vit_layer
    infos = [i for i in list_layers(model) if not isinstance(i.layer, keras.Model)]
    outputs = int(model.outputs[0].shape[-1] or 0) if model.outputs else 0
    weighted = [i.position for i in infos if i.layer.weights]
    last_weighted = max(weighted) if weighted else -1

    def class_scores(info: LayerInfo) -> bool:
        return outputs > 1 and info.output_shape[-1] == outputs and info.position >= last_weighted

    large = [
        info
        for info in spatial
        if all(d is None or d >= MIN_CAM_EXTENT for d in info.output_shape[:-1])
        and not class_scores(info)
    ]
    return (large or spatial)[-1].path


def keyword_layer(model: keras.Model, keyword: str) -> str | None:
    """Resolve a layer keyword of :data:`KEYWORDS` to a layer path (None if none fits).

    ``output``: the layer producing the (first) model output; ``last_conv``:
    :func:`default_cam_layer`; ``last_hidden``: the last layer with weights and a flat
    (units,) output before the output layer.
    """
    if keyword not in KEYWORDS:
        raise KerascopeError(f"unknown layer keyword '{keyword}'; valid: {', '.join(KEYWORDS)}")
    infos = [i for i in list_layers(model) if not isinstance(i.layer, keras.Model)]
    if keyword == "output":
        return infos[-1].path
    if keyword == "last_conv":
        try:
            return default_cam_layer(model)
        except KerascopeError:
            return None
    hidden = [
        i
        for i in infos[:-1]
        if i.layer.weights and i.output_shape is not None and len(i.output_shape) == 1
    ]
    return hidden[-1].path if hidden else None


def summary_rows(model: keras.Model) -> list[tuple[str, str, str, int]]:
    """The model summary: (layer path, class name, output shape, parameters) per layer.

    A nested model's own row counts no parameters: its layers are listed themselves.
    """
    return [
        (
            info.path,
            info.class_name,
            str(info.output_shape),
            0 if isinstance(info.layer, keras.Model) else int(info.layer.count_params()),
        )
        for info in list_layers(model)
    ]


def layer_edges(
    model: keras.Model, infos: Sequence[LayerInfo] | None = None
) -> list[tuple[int, int]]:
    """Data-flow edges between the entries of :func:`list_layers`, from the Keras graph.

    A nested model's entry feeds its first inner layers, and its consumers are fed by
    its last inner layer, so the edges follow the data through the nested model.

    Returns:
        Sorted (from, to) index pairs into ``infos``.
    """
    infos = list(infos if infos is not None else list_layers(model))
    index = {info.path: i for i, info in enumerate(infos)}
    exits = {}
    for i, info in enumerate(infos):
        inner = [j for j, other in enumerate(infos) if other.path.startswith(info.path + "/")]
        if inner:
            exits[i] = max(inner)
    edges: set[tuple[int, int]] = set()

    def visit(graph, prefix: str, owner: int | None) -> None:
        names = {id(node): f"{prefix}{local}" for node, local, _ in node_names(graph)}
        for node, local, _ in node_names(graph):
            here = index.get(f"{prefix}{local}")
            if here is None:
                continue
            parents = [index.get(names.get(id(p))) for p in node.parent_nodes]
            parents = [exits.get(i, i) for i in parents if i is not None]
            if not parents and owner is not None:
                parents = [owner]
            edges.update((i, here) for i in parents)
            inner = graph_of(node.operation) if isinstance(node.operation, keras.Model) else None
            if inner is not None:
                visit(inner, f"{prefix}{local}/", here)

    visit(graph_of(model), "", None)
    return sorted(edges)


def _has_output_activation(op) -> str | None:
    act = getattr(op, "activation", None)
    name = getattr(act, "__name__", None)
    return name if name in _SOFTMAX_NAMES else None


def _linear_copy(layer: keras.layers.Layer, input_shape) -> keras.layers.Layer:
    """Build a copy of ``layer`` with a linear activation that shares its variables.

    The user's layer is never modified. The copy reads the *same* variables, so later
    changes to the weights (training, the randomisation sanity check on a clone) are
    seen by the logits as well. Layers whose variables cannot be shared get a snapshot.
    """
    config = dict(layer.get_config())
    config["activation"] = "linear"
    config["name"] = f"{layer.name}_logits"
    clone = type(layer).from_config(config)
    clone.build(input_shape)
    originals = {id(c): o for c, o in zip(clone.weights, layer.weights, strict=True)}
    shared = 0
    for attr, value in list(vars(clone).items()):
        if id(value) in originals:
            # object.__setattr__ bypasses Keras' tracking: the copy must not own them.
            object.__setattr__(clone, attr, originals[id(value)])
            shared += 1
    if shared != len(originals):
        clone.set_weights(layer.get_weights())
    return clone


def _only_tensor(outputs):
    """A layer's output as one tensor where it wraps one (a SavedModel layer's dict)."""
    if isinstance(outputs, dict) and len(outputs) == 1:
        return next(iter(outputs.values()))
    if isinstance(outputs, list | tuple) and len(outputs) == 1:
        return outputs[0]
    return outputs


#: Suffix of the tap keys under which :class:`LayerForward` returns attention scores.
SCORES = "#attention_scores"


class LayerForward:
    """A forward pass that also returns chosen intermediate outputs, in one pass.

    Build it once and call it many times (it is cheap to wrap in ``tf.function``)::

        forward = LayerForward(model, ["conv2d", "base/block1_conv1"], logits=True)
        outputs, taps = forward(x)          # taps["conv2d"] has shape (N, ...)

    Args:
        model: A built Sequential or Functional model (nested models are fine).
        paths: Layer paths to capture (see :func:`resolve_layers`).
        logits: Bypass a final softmax/sigmoid so outputs are pre-activation scores
            (Simonyan et al. 2013 and Selvaraju et al. 2017 explain scores before
            softmax). The model itself is left untouched.
        preactivation: Layer paths computed without their activation function (a
            linear copy sharing the layer's variables), so a ReLU unit that is off still
            has a gradient; feature visualization optimises these pre-activations, as
            Olah et al. (2017) do with pre-ReLU tensors.
        attention: Paths of ``MultiHeadAttention`` calls whose attention scores
            (N, heads, T, T) are captured as ``taps["<path>" + SCORES]``: each is called
            with ``return_attention_scores=True`` and passes only its output on, so the
            model computes exactly what it computes without them.
        stop_early: Stop once every tap (``paths`` and ``attention``) is captured and
            return None as the outputs. Tracing a 400-layer net to the end for a tap near its input
            cost seconds per traced function; layers past the last tap are not called.
    """

    def __init__(
        self,
        model: keras.Model,
        paths: Sequence[str] = (),
        *,
        logits: bool = False,
        preactivation: Sequence[str] = (),
        attention: Sequence[str] = (),
        stop_early: bool = False,
    ) -> None:
        self.model = model
        self.paths = list(paths)
        self.attention = set(attention)
        # Every tap key the caller waits for: layer outputs and attention scores.
        self._tap_keys = set(self.paths) | {path + SCORES for path in self.attention}
        self.stop_early = stop_early and bool(self._tap_keys)
        valid = {i.path for i in list_layers(model)}
        for path in (*self.paths, *attention):
            if path not in valid:
                raise KerascopeError(
                    f"no layer named '{path}'; {choices_hint(path, sorted(valid))}"
                )
        self.logits = logits
        self._wanted = set(self.paths)
        self._replacements: dict[int, keras.layers.Layer] = {}
        self._by_path: dict[str, keras.layers.Layer] = {}
        if logits:
            self._prepare_logits(model)
        for path in preactivation:
            self._prepare_preactivation(model, path)

    def _prepare_logits(self, model: keras.Model) -> None:
        """Find the operations that produce the model outputs and plan their linear copies."""
        graph = graph_of(model)
        if graph is None:
            return
        output_ids = {id(t) for t in graph.outputs}
        for node in reversed(ordered_nodes(graph)):  # a score head passes the logits on
            if getattr(node.operation, "score_head", False) and any(
                id(t) in output_ids for t in node.outputs
            ):
                output_ids.update(id(t) for t in node.input_tensors)
        for node in ordered_nodes(graph):
            if not any(id(t) in output_ids for t in node.outputs):
                continue
            op = node.operation
            if isinstance(op, keras.Model):
                self._prepare_logits(op)
            elif type(op).__name__ in ("Softmax",) or (
                type(op).__name__ == "Activation" and _has_output_activation(op)
            ):
                self._replacements[id(op)] = None  # skip: identity
            elif _has_output_activation(op):
                shape = node.input_tensors[0].shape
                self._replacements[id(op)] = _linear_copy(op, shape)

    def _prepare_preactivation(self, model: keras.Model, path: str) -> None:
        """Plan a linear copy of one layer call, so its tap is the pre-activation."""

        def visit(graph, prefix):
            for node, local, _ in node_names(graph):
                here = f"{prefix}{local}"
                if here == path:
                    op = node.operation
                    if getattr(op, "activation", None) is not None:
                        shape = node.input_tensors[0].shape
                        self._by_path[path] = _linear_copy(op, shape)
                    return True
                inner = (
                    graph_of(node.operation) if isinstance(node.operation, keras.Model) else None
                )
                if inner is not None and path.startswith(here + "/") and visit(inner, here + "/"):
                    return True
            return False

        if not visit(graph_of(model), ""):
            raise KerascopeError(f"no layer named '{path}'")

    def __call__(self, inputs):
        """Run the model on ``inputs``.

        Args:
            inputs: A tensor (or a list/dict of tensors for multi-input models).

        Returns:
            ``(outputs, taps)``: the model's outputs (structure as the model's; None
            with ``stop_early``) and a dict from layer path to the captured tensor.
        """
        taps: dict[str, object] = {}
        outputs = self._run(self.model, inputs, "", taps)
        if self.stop_early:
            outputs = None
        return outputs, taps

    def _call_op(self, op, args, kwargs):
        if id(op) in self._replacements:
            replacement = self._replacements[id(op)]
            if replacement is None:
                return args[0]
            op = replacement
        if getattr(op, "_call_has_training_arg", False):
            kwargs = dict(kwargs)
            kwargs["training"] = False
        return op(*args, **kwargs)

    def _run(self, model, inputs, prefix: str, taps: dict):
        from keras.src import tree

        graph = graph_of(model)
        flat_inputs = tree.flatten(inputs)
        tensors = {id(x): y for x, y in zip(graph.inputs, flat_inputs, strict=True)}
        # Each value is dropped after its last consumer: run eagerly, holding every
        # layer's output to the end took 9.6 GB for 100 inputs of a 224x224 MobileNetV2.
        uses: dict[int, int] = {}
        for node in ordered_nodes(graph):
            for x in node.input_tensors:
                uses[id(x)] = uses.get(id(x), 0) + 1
        for x in graph.outputs:
            uses[id(x)] = uses.get(id(x), 0) + 1
        for node, local, _ in node_names(graph):
            if any(id(x) not in tensors for x in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            op = node.operation
            path = f"{prefix}{local}"
            inner = graph_of(op) if isinstance(op, keras.Model) else None
            if inner is not None and (
                any(p.startswith(path + "/") for p in (*self._wanted, *self._by_path))
                or self.logits
            ):
                nested_inputs = args[0] if len(args) == 1 else list(args)
                outputs = self._run(op, nested_inputs, path + "/", taps)
            elif path in self._by_path:
                outputs = self._call_op(self._by_path[path], args, kwargs)
            elif path in self.attention:
                if not isinstance(op, keras.layers.MultiHeadAttention):
                    raise KerascopeError(
                        f"layer '{path}' returns no attention scores (a {type(op).__name__}, "
                        "not a MultiHeadAttention)"
                    )
                given = bool(kwargs.get("return_attention_scores"))
                outputs = self._call_op(op, args, {**kwargs, "return_attention_scores": True})
                taps[path + SCORES] = outputs[1]
                if not given:  # the graph expects the attention output alone
                    outputs = outputs[0]
            else:
                outputs = self._call_op(op, args, kwargs)
            if path in self._wanted:
                taps[path] = _only_tensor(outputs)
            if self.stop_early and self._tap_keys.issubset(taps):
                return None  # every tap is in: the rest of the graph is not needed
            del args, kwargs
            for x in node.input_tensors:
                uses[id(x)] -= 1
                if uses[id(x)] == 0:
                    tensors.pop(id(x), None)
            for x, y in zip(node.outputs, tree.flatten(outputs), strict=True):
                tensors[id(x)] = y
            del outputs
        results = [tensors[id(x)] for x in graph.outputs]
        return tree.pack_sequence_as(graph._outputs_struct, results)


def class_count(model: keras.Model) -> int:
    """How many classes the model tells apart: its output units (2 for a one-unit head).

    A model ending in a score head (:mod:`pipeline.attribution.heads`) has one score.
    """
    units = int(model.outputs[0].shape[-1] or 1) if model.outputs else 1
    if units == 1 and score_head(model) is not None:
        return 1
    return 2 if units == 1 else units


def score_head(model: keras.Model):
    """The score head that makes ``model``'s (first) output, or None."""
    graph = graph_of(model)
    if graph is None or not graph.outputs:
        return None
    op = getattr(getattr(graph.outputs[0], "_keras_history", None), "operation", None)
    return op if getattr(op, "score_head", False) else None


def output_activation(model: keras.Model) -> str:
    """How the model's (first) output is squashed: ``softmax``, ``sigmoid`` or ``linear``.

    ``linear`` means the model outputs logits; a final ``Softmax`` layer or a layer with
    a softmax/sigmoid activation is recognised, nested models included.
    """
    graph = graph_of(model)
    if graph is None:
        return "linear"
    output_ids = {id(t) for t in graph.outputs[:1]}
    for node in ordered_nodes(graph):
        if any(id(t) in output_ids for t in node.outputs):
            op = node.operation
            if isinstance(op, keras.Model):
                return output_activation(op)
            if type(op).__name__ == "Softmax":
                return "softmax"
            name = _has_output_activation(op)
            if name:
                return name
    return "linear"
